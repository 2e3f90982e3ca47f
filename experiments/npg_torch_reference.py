"""The reference for experiments/bench_npg.py: an mjrl-style natural policy gradient update in PyTorch.

Written from the algorithm's description (DESIGN.md section 1, NPG reference numbers), not from mjrl's
code. The policy is a tanh MLP for the mean and a state-independent log_std (floored). One update:
  - the vanilla gradient g of the likelihood-ratio surrogate mean(pi / pi_old * A);
  - x = F^-1 g by `cg_iterations` of conjugate gradient (stopping at r.r < `cg_tolerance`), each
    product F v the Hessian of the mean KL(old || new) times v by double backprop, plus damping * v;
  - the normalised step alpha = sqrt(delta / (g^T x + 1e-20)), then the mean KL and the surrogate at
    the new params (the jitted update's KL check).
With `--fvp=mjrl` every product re-runs the forward pass and builds the KL's gradient graph again, as
mjrl does; `--fvp=retained` builds it once and keeps it (retain_graph) across the CG iterations.

torch is not a project dependency. Run it from a separate virtualenv (`pip install torch==2.13.0`).
The benchmark writes the policy and the batch to an .npz and keeps this script running on it as a
subprocess, so that its updates can take turns with the jitted ones: each line read from stdin runs
one update, from the same params every time, and prints one JSON line with its seconds and numbers
(step size, KL, ...) for checking against the jitted update. By hand, three updates:
  printf '\n\n\n' | /tmp/torchvenv/bin/python experiments/npg_torch_reference.py --data=batch.npz
"""

import argparse
import json
import math
import sys
import time

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True, help='.npz from bench_npg.py: weights, biases, batch, config.')
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads.')
  parser.add_argument('--fvp', choices=('mjrl', 'retained'), default='mjrl', help='How products build the KL graph.')
  return parser.parse_args()


class Policy(torch.nn.Module):
  """mean = MLP(inputs), tanh hidden layers; log_std a free vector, floored at min_log_std."""

  def __init__(self, data):
    super().__init__()
    layers = []
    for i in range(int(data['num_layers'])):
      kernel = data[f'kernel_{i}']  # [in, out], flax's layout
      layer = torch.nn.Linear(*kernel.shape)
      layer.weight.data = torch.from_numpy(kernel.T.copy())
      layer.bias.data = torch.from_numpy(data[f'bias_{i}'].copy())
      layers.append(layer)
    self.layers = torch.nn.ModuleList(layers)
    self.log_std = torch.nn.Parameter(torch.from_numpy(data['log_std'].copy()))
    self.min_log_std = float(data['min_log_std'])

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for layer in self.layers[:-1]:
      x = torch.tanh(layer(x))
    return self.layers[-1](x), torch.clamp(self.log_std, min=self.min_log_std)


def log_prob(mean, log_std, actions):
  z = (actions - mean) * torch.exp(-log_std)
  return -0.5 * torch.sum(z**2 + 2 * log_std + math.log(2 * math.pi), -1)


def mean_kl(mean_old, log_std_old, mean_new, log_std_new):
  """mean over samples of KL(old || new), diagonal Gaussians."""
  ratio = torch.exp(2 * (log_std_old - log_std_new))
  z = (mean_old - mean_new) * torch.exp(-log_std_new)
  return torch.mean(0.5 * torch.sum(ratio + z**2 - 1 - torch.log(ratio), -1))


def flat(tensors) -> torch.Tensor:
  return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(matvec, b: torch.Tensor, iterations: int, tolerance: float) -> torch.Tensor:
  x, r, p = torch.zeros_like(b), b.clone(), b.clone()
  rr = r @ r
  for _ in range(iterations):
    if rr < tolerance:
      break
    ap = matvec(p)
    step = rr / (p @ ap)
    x += step * p
    r -= step * ap
    rr_new = r @ r
    p = r + rr_new / rr * p
    rr = rr_new
  return x


def update(policy: Policy, inputs, actions, advantages, config, fvp: str) -> dict:
  params = list(policy.parameters())
  with torch.no_grad():
    mean_old, log_std_old = policy(inputs)
    old_log_prob = log_prob(mean_old, log_std_old, actions)

  def surrogate():
    mean, log_std = policy(inputs)
    return torch.mean(torch.exp(log_prob(mean, log_std, actions) - old_log_prob) * advantages)

  surrogate_before = surrogate()
  g = flat(torch.autograd.grad(surrogate_before, params))

  def kl_gradient():
    return flat(torch.autograd.grad(mean_kl(mean_old, log_std_old, *policy(inputs)), params, create_graph=True))

  if fvp == 'retained':
    retained = kl_gradient()
    product = lambda v: flat(torch.autograd.grad(retained @ v, params, retain_graph=True))
  else:
    product = lambda v: flat(torch.autograd.grad(kl_gradient() @ v, params))
  x = conjugate_gradient(lambda v: product(v) + config['damping'] * v, g, config['cg_iterations'],
                         config['cg_tolerance'])
  gx = float(g @ x)
  alpha = math.sqrt(config['step_size'] / (gx + 1e-20))
  with torch.no_grad():
    offset = 0
    for p in params:
      p += alpha * x[offset:offset + p.numel()].reshape(p.shape)
      offset += p.numel()
    kl = mean_kl(mean_old, log_std_old, *policy(inputs))
    surrogate_after = surrogate()
  return {'step_size': alpha, 'g_dot_x': gx, 'grad_norm': float(g.norm()), 'kl': float(kl),
          'surrogate_before': float(surrogate_before.detach()), 'surrogate_after': float(surrogate_after)}


def main():
  args = parse_args()
  torch.set_num_threads(args.threads)
  data = dict(np.load(args.data))
  config = {name: float(data[name]) for name in ('step_size', 'damping', 'cg_tolerance')}
  config['cg_iterations'] = int(data['cg_iterations'])
  inputs, actions, advantages = (torch.from_numpy(data[name]) for name in ('inputs', 'actions', 'advantages'))
  for _ in sys.stdin:
    policy = Policy(data)
    start = time.perf_counter()
    result = update(policy, inputs, actions, advantages, config, args.fvp)
    seconds = time.perf_counter() - start
    print(json.dumps({'torch_version': torch.__version__, 'threads': torch.get_num_threads(), 'fvp': args.fvp,
                      'num_samples': len(inputs), 'seconds': seconds, **result}), flush=True)


if __name__ == '__main__':
  main()
