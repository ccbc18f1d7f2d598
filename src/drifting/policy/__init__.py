"""Robot-control policies (paper §5.3, Table 7): environments, scripted experts, demonstrations.

* :mod:`drifting.policy.envs`: PushT (gym-pusht, state observations; score = the episode's maximum
  target coverage) and LunarLanderContinuous, faithful simulator state save/restore, and a batched
  receding-horizon runner (``run_episodes``) that times the policy per action.
* :mod:`drifting.policy.experts`: a simulate-then-push PushT expert and a noisy (multimodal)
  LunarLander heuristic expert; demonstrations collected, filtered and cached on disk.

Needs the ``policy`` extra (``pip install -e ".[policy]"``).
"""
