"""The ``rnnkit`` command and its experiments (``cli``, ``compare``, the benchmark timing rule in
``timing``): applications of the library, not part of its API."""
