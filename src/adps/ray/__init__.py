"""adps on Ray (``pip install adps[ray]``): past one process without a scheduler of our own.

Nothing here imports ``ray`` at import time of ``adps``; each submodule imports it when a Ray
path is asked for.
"""
