"""StreamLoader: training or evaluation batches of a streamed split on the device, with the
interface of DeviceLoader (len, batches(epoch, start)).

Three things run at once: the shard reader (reader.py), a thread that turns the next batches'
rows into image crops (decoders.py; at most `ahead` batches wait), and the consumer, which
normalises a batch as it takes it. On a GPU the crops are made on a stream of their own, so they
overlap the training step; the consumer's stream waits for them.
"""
from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from typing import Callable, Iterator

import numpy as np
import torch

from ffpipe.data.loader import batches_per_epoch
from ffpipe.data.stream.crops import batch_draws, eval_box, mirrors, train_box
from ffpipe.data.stream.decoders import CpuDecoder, GpuDecoder
from ffpipe.data.stream.order import epoch_order
from ffpipe.data.stream.reader import ShardStore
from ffpipe.data.stream.split import StreamSplit

KeepRows = Callable[[int], slice]  # a batch's row count -> the rows this process uses (replicas)


class StreamLoader:
    def __init__(self, split: StreamSplit, batch_size: int, device: torch.device, mean: list[float],
                 std: list[float], *, train: bool, seed: int = 0, flip: bool = True,
                 augment: bool = True, decode: str = "auto",
                 threads: int = 1, window: int = 8192, ahead: int = 3, drop_last: bool = True,
                 dtype: torch.dtype = torch.float32, keep_rows: KeepRows | None = None):
        """`decode`: 'gpu' (nvJPEG), 'cpu' (PIL on `threads` threads) or 'auto' (gpu on a GPU);
        `augment`: training crops random-resized (else the centre crop, still shuffled);
        `window`: rows shuffled together (order.py); `keep_rows`: for one of several replicas
        of stage 0, its rows of every batch (it decodes only those)."""
        self.split, self.batch_size, self.device = split, batch_size, device
        self.train, self.seed, self.window = train, seed, window
        self.augment = augment and train
        self.flip = flip and self.augment
        self.gpu = decode == "gpu" or (decode == "auto" and device.type == "cuda")
        self.threads, self.ahead, self.dtype = threads, ahead, dtype
        self.drop_last = drop_last and train
        self.cuts = keep_rows is not None
        self.keep_rows = keep_rows or (lambda n: slice(0, n))
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.host = True  # never the whole split on the device (DeviceLoader's question)
        # (first row, rows of the whole batch) of the batch last yielded, where keep_rows cuts it
        self.shard: tuple[int, int] | None = None
        self.seconds: dict[str, float] = {}  # per phase, summed over the epochs streamed (bench stream)

    def __len__(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.drop_last)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised images, labels) of batches start, start+1, ... of `epoch`."""
        order = epoch_order(self.split.rows_per_shard, self.seed, epoch, self.window, self.train)
        shards_ahead = int(np.ceil(order.window / self.split.mean_shard_rows())) + 1
        store = ShardStore(self.split, order, start * self.batch_size, shards_ahead)
        decoder = GpuDecoder(self.device, self.threads) if self.gpu else CpuDecoder(self.threads)
        made: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()
        worker = threading.Thread(target=self._make_all, args=(order, epoch, start, store, decoder, made, stop),
                                  name="ffpipe-crops", daemon=True)
        worker.start()
        try:
            for _ in range(start, len(self)):
                item = made.get()
                if isinstance(item, BaseException):
                    raise item
                x, y, done, self.shard = item
                yield self._finish(x, y, done)
        finally:
            stop.set()
            while worker.is_alive():  # let a worker blocked on a full queue see the stop
                try:
                    made.get(timeout=0.05)
                except queue.Empty:
                    pass
            store.close()
            decoder.close()
            for phase, spent in [("read", store.read_s), *decoder.seconds.items()]:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + spent

    def _make_all(self, order, epoch, start, store, decoder, made: queue.Queue, stop) -> None:
        side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            for b in range(start, len(self)):
                if stop.is_set():
                    return
                with torch.cuda.stream(side_stream) if side_stream is not None else nullcontext():
                    item = self._make(order, epoch, b, store, decoder)
                _put(made, item, stop)
        except BaseException as err:  # raised again in the consumer's thread
            _put(made, err, stop)

    def _make(self, order, epoch: int, b: int, store: ShardStore, decoder):
        ids = order.use_ids[b * self.batch_size:(b + 1) * self.batch_size]
        keep = self.keep_rows(len(ids))
        blobs, labels, names = store.take(ids, keep)
        size = self.split.side
        if self.augment:
            draws = batch_draws(self.seed, epoch, b, len(ids))[keep]
            mirror = mirrors(draws) if self.flip else np.zeros(len(draws), dtype=bool)
            box_of = lambda i, h, w: train_box(h, w, draws[i])  # noqa: E731
        else:
            mirror = np.zeros(len(blobs), dtype=bool)
            box_of = lambda i, h, w: eval_box(h, w)  # noqa: E731
        x = decoder.batch(blobs, names, box_of, size, mirror)
        if self.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory()
        done = None
        if x.is_cuda:
            done = torch.cuda.Event()
            done.record()
        cut = (keep.start, len(ids)) if keep != slice(0, len(ids)) else None
        return x, torch.from_numpy(labels), done, cut

    def _finish(self, x: torch.Tensor, y: torch.Tensor, done) -> tuple[torch.Tensor, torch.Tensor]:
        if done is not None:  # made on the crops' stream: this stream waits, the memory is ours
            torch.cuda.current_stream(self.device).wait_event(done)
            x.record_stream(torch.cuda.current_stream(self.device))
        x = x.to(self.device, non_blocking=True).float().div_(255)
        x = (x - self.mean) / self.std
        return x.to(self.dtype), y.to(self.device, non_blocking=True)


def _put(made: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            made.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
