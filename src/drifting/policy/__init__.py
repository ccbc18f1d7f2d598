"""Robot-control policies (paper §5.3, Table 7): environments, scripted experts, demonstrations.

* :mod:`drifting.policy.envs`: PushT (gym-pusht, state observations; score = the episode's maximum
  target coverage) and LunarLanderContinuous, faithful simulator state save/restore, and a batched
  receding-horizon runner (``run_episodes``) that times the policy per action.
* :mod:`drifting.policy.experts`: a simulate-then-push PushT expert and a noisy (multimodal)
  LunarLander heuristic expert; demonstrations collected, filtered and cached on disk.
* :mod:`drifting.policy.data`: training windows with Diffusion Policy's horizons (observation,
  prediction and action horizons, edge padding) and the fitted min-max normalizer.
* :mod:`drifting.policy.unet`: the conditional 1-D temporal U-Net (FiLM on the observations).
* :mod:`drifting.policy.policies`: :class:`DriftingPolicy` (one step, drifting loss on action
  sequences) and :class:`DiffusionPolicy` (DDPM / DDIM) behind one contract.

Needs the ``policy`` extra (``pip install -e ".[policy]"``).
"""
