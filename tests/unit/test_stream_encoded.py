"""The GPU decoder's input: a batch's encoded images as views of one tensor, and which are JPEGs
(nvJPEG takes those; the rest go to the CPU decoder)."""
import numpy as np
import torch

from ffpipe.data.stream.decoders import encoded


def test_blobs_become_views_of_one_copy_with_their_bytes_and_jpegs_are_told_apart():
    jpeg, png = b"\xff\xd8\xff\xe0" + bytes(range(20)), b"\x89PNG\r\n" + bytes(10)
    shard = np.frombuffer(jpeg + png, dtype=np.uint8)  # rows of a shard are read-only slices of it
    blobs = [shard[:len(jpeg)], shard[len(jpeg):], b"\xff", jpeg, b""]
    data, is_jpeg = encoded(blobs)
    assert is_jpeg.tolist() == [True, False, False, True, False]
    assert [bytes(t.numpy()) for t in data] == [jpeg, png, b"\xff", jpeg, b""]
    assert all(t.dtype == torch.uint8 and t.dim() == 1 and t.is_contiguous() for t in data)
    assert len({t.untyped_storage().data_ptr() for t in data}) == 1  # one copy, not one per blob
    data[0][0] = 0  # writable (nvJPEG's input), and the shard's bytes are not touched
    assert shard[0] == 0xFF


def test_an_empty_batch_has_no_blobs():
    data, is_jpeg = encoded([])
    assert data == [] and is_jpeg.tolist() == []
