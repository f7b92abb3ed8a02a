"""adps on Ray (``pip install adps[ray]``): past one process without a scheduler of our own.

- :mod:`adps.ray.training`: a manifest's rows as Ray tasks (`adps benchmark --manifest`).
- :mod:`adps.ray.scoring`: scoring as a stream on Ray Data (`adps predict --engine ray`), with
  its decode stage in :mod:`adps.ray.decoding` (a module without torch, for fast workers).
- :mod:`adps.ray.serving`: the service on Ray Serve (`adps serve --ray`).

Importing ``adps`` never imports ``ray``; the scoring and training modules import it when a Ray
path runs, and the serving module (whose deployments are Ray Serve classes) when it is imported.
"""
