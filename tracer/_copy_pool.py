"""Reusable CPU memory for the copies that wait in the writer's queue: :class:`CopyPool`.

>>> pool = CopyPool(max_bytes=1 << 20)
>>> pool.empty((4, 4), torch.float32).shape
torch.Size([4, 4])
"""

from __future__ import annotations

import math
import threading
import weakref

import torch


class CopyPool:
    """Reusable CPU memory for the copies that wait in the writer's queue.

    A full capture copies every tensor it records, and the copy lives until a writer
    thread has encoded it. Fresh memory for each copy costs page faults on the training
    thread (a 4 MB copy takes 10× longer into new pages than into used ones) and leaves
    the allocator fragmented (allocated on one thread, freed on another). Copies of at
    least :data:`POOLED` elements come from here instead: each is a view of a block, and
    the block comes back to the pool when the view is garbage — when nothing, on any
    thread, can read it any more — so reuse is safe by construction. At most ``max_bytes``
    of free blocks are kept.
    """

    POOLED = 1 << 14
    # finish() hands NumPy a tensor's memory (``.numpy()`` references the storage, not the
    # tensor object) only for tensors of at most _COPY_FOR_STATS elements: never a pooled one

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[torch.dtype, int], list[torch.Tensor]] = {}
        self._free_bytes = 0
        self._lock = threading.RLock()  # a finalizer may run inside empty() (garbage collection)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous CPU tensor (contents undefined).

        Use the returned object itself: a view made from it (``.view``, ``.reshape``)
        does not keep the block from going back to the pool.
        """
        numel = math.prod(shape)
        if numel < self.POOLED:
            return torch.empty(shape, dtype=dtype, device="cpu")  # whatever the default device
        key = (dtype, numel)
        with self._lock:
            blocks = self._free.get(key)
            block = blocks.pop() if blocks else None
            if block is not None:
                self._free_bytes -= block.nbytes
        if block is None:
            with torch.inference_mode(False):  # a block made in inference mode could not be reused outside it
                block = torch.empty(numel, dtype=dtype, device="cpu")
        view = block.view(shape)  # a new tensor object sharing the block's memory
        weakref.finalize(view, self._give_back, key, block).atexit = False
        return view

    def _give_back(self, key: tuple[torch.dtype, int], block: torch.Tensor) -> None:
        with self._lock:
            if self._free_bytes + block.nbytes <= self.max_bytes:
                blocks = self._free.get(key)
                if blocks is None:
                    blocks = self._free[key] = []
                blocks.append(block)
                self._free_bytes += block.nbytes
