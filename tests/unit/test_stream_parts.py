"""The pure parts of streaming: the epoch's order (a function of shard sizes, seed and epoch) and
ImageNet's crops (torchvision's random-resized-crop rule, the evaluation centre crop)."""
import numpy as np
import pytest

from ffpipe.data.stream.crops import batch_draws, eval_box, mirrors, train_box
from ffpipe.data.stream.order import epoch_order, shard_of, shard_starts

ROWS = [7, 10, 3, 10, 9]


def test_an_epoch_uses_every_row_once_each_window_a_shuffle_of_what_was_read():
    order = epoch_order(ROWS, seed=1, epoch=0, window=8)
    n = sum(ROWS)
    assert sorted(order.use_ids) == list(range(n)) and sorted(order.read_ids) == list(range(n))
    for lo in range(0, n, 8):  # a row is used inside the window it was read in
        assert sorted(order.use_ids[lo:lo + 8]) == sorted(order.read_ids[lo:lo + 8])
    starts = shard_starts(ROWS)
    read_shards = shard_of(order.read_ids, starts)
    assert [int(s) for s in dict.fromkeys(read_shards)] == list(order.shard_order)  # each shard read whole, once
    assert not np.array_equal(order.use_ids, np.sort(order.use_ids))


def test_the_order_depends_on_seed_and_epoch_only():
    a, b = epoch_order(ROWS, 3, 2, 8), epoch_order(ROWS, 3, 2, 8)
    assert np.array_equal(a.use_ids, b.use_ids)
    assert not np.array_equal(a.use_ids, epoch_order(ROWS, 3, 3, 8).use_ids)
    assert not np.array_equal(a.use_ids, epoch_order(ROWS, 4, 2, 8).use_ids)
    plain = epoch_order(ROWS, 3, 2, 8, shuffle=False)  # evaluation: stored order
    assert list(plain.use_ids) == list(range(sum(ROWS)))


def test_reading_stops_at_the_end_of_the_window_in_use_and_resumes_at_its_start():
    order = epoch_order(ROWS, 0, 0, window=8)
    assert [order.read_end(u) for u in (0, 1, 8, 9, 39)] == [0, 8, 8, 16, 39]
    assert [order.read_start(u) for u in (0, 7, 8, 17)] == [0, 0, 8, 16]
    assert epoch_order(ROWS, 0, 0, window=10_000).window == sum(ROWS)


def test_training_crops_follow_torchvisions_random_resized_crop():
    draws = batch_draws(seed=0, epoch=0, batch=0, rows=2000)
    for h, w in [(375, 500), (500, 375), (64, 64), (20, 300)]:
        boxes = np.array([train_box(h, w, d) for d in draws])
        top, left, ch, cw = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
        area = ch * cw / (h * w)
        if h / w in (0.75, 4 / 3, 1.0):  # no fallback needed: scale and ratio inside torchvision's ranges
            assert 0.07 <= area.min() and area.max() <= 1.0
            assert 3 / 4 - 0.05 < (cw / ch).min() and (cw / ch).max() < 4 / 3 + 0.05
            assert 0.4 < area.mean() < 0.7  # the scale is uniform on [0.08, 1]
    assert 0.45 < mirrors(draws).mean() < 0.55
    assert np.array_equal(draws, batch_draws(0, 0, 0, 2000)) and not np.array_equal(draws, batch_draws(0, 0, 1, 2000))


@pytest.mark.parametrize("h, w, box", [(256, 256, (16, 16, 224, 224)), (375, 500, (23, 86, 328, 328))])
def test_evaluation_crops_are_the_centre_that_resize_256_crop_224_keeps(h, w, box):
    assert eval_box(h, w) == box
