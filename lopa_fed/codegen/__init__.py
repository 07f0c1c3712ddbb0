"""Code generation on a frozen causal LM: prompts, batched decoding, the sandbox and pass@1.

* :mod:`.prompting`: chat templating and answer-only token ids (training data);
* :mod:`.generate`: batched decoding with a soft prefix Z;
* :mod:`.stops`: where generated text ends;
* :mod:`.sandbox` (parent side), :mod:`.sandbox_child` (the program that runs a candidate) and
  :mod:`.cgroup` (kernel limits: cgroup, rlimits, network namespace, output pipes);
* :mod:`.scoring`: pass@1 and the answer-token loss.
"""
