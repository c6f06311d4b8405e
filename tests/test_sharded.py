"""A DTensor as its local shard and place (tracer._sharded), on torch's fake process group: one
process plays rank r of a world of n, so uneven, empty, padded and 2-D-mesh shards are all here."""

from __future__ import annotations

import pytest
import torch

from tracer._sharded import module_type, original_name, shard_of
from tracer._tensors import Unreadable

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("needs torch.distributed", allow_module_level=True)

from torch.distributed.device_mesh import DeviceMesh  # noqa: E402
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard  # noqa: E402
from torch.distributed.tensor.placement_types import _StridedShard  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402


@pytest.fixture
def as_rank():
    """``as_rank(rank, world)`` makes this process that rank (a fake group: no peers, no data)."""

    def start(rank, world):
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)

    yield start
    if dist.is_initialized():
        dist.destroy_process_group()


def dtensor(local, mesh, placements, shape):
    stride = torch.empty(shape).stride()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)


def test_a_plain_tensor_is_not_sharded():
    assert shard_of(torch.zeros(3)) is None
    assert shard_of(torch.nn.Parameter(torch.zeros(3))) is None


def test_the_second_rank_of_an_uneven_dim0_split_starts_where_the_first_ends(as_rank):
    as_rank(1, 2)
    local = torch.arange(6.0).reshape(2, 3)
    s = shard_of(dtensor(local, DeviceMesh("cpu", [0, 1]), [Shard(0)], (5, 3)))
    assert ((5, 3), (3, 0), "Shard(dim=0)") == (s.global_shape, s.shard_offset, s.placements)
    assert type(s.local) is torch.Tensor and local.data_ptr() == s.local.data_ptr()  # no copy
    assert torch.equal(local, s.local)


def test_an_empty_shard_has_torch_s_offset_and_no_elements(as_rank):
    as_rank(1, 2)
    s = shard_of(dtensor(torch.zeros(0, 5), DeviceMesh("cpu", [0, 1]), [Shard(0)], (1, 5)))
    assert ((1, 5), (1, 0), (0, 5)) == (s.global_shape, s.shard_offset, tuple(s.local.shape))


def test_a_padded_local_tensor_is_narrowed_to_the_real_elements(as_rank):
    as_rank(1, 2)
    padded = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0]])  # FSDP-style: pad at the end
    d = dtensor(padded, DeviceMesh("cpu", [0, 1]), [Shard(0)], (5, 3))
    s = shard_of(d)
    assert [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] == s.local.tolist() and (3, 0) == s.shard_offset
    assert padded.data_ptr() == s.local.data_ptr()


def test_a_local_tensor_smaller_than_its_shard_is_unreadable_and_says_why(as_rank):
    as_rank(0, 2)
    d = dtensor(torch.zeros(1, 3), DeviceMesh("cpu", [0, 1]), [Shard(0)], (5, 3))
    with pytest.raises(Unreadable, match=r"local tensor has shape \[1, 3\], not the shape \[3, 3\]"):
        shard_of(d)


def test_replicated_and_partial_tensors_start_at_zero(as_rank):
    as_rank(1, 2)
    mesh = DeviceMesh("cpu", [0, 1])
    r = shard_of(dtensor(torch.ones(2, 2), mesh, [Replicate()], (2, 2)))
    assert ((0, 0), "Replicate()") == (r.shard_offset, r.placements)
    p = shard_of(dtensor(torch.ones(3), mesh, [Partial()], (3,)))
    assert ((0,), "Partial(sum)") == (p.shard_offset, p.placements)


@pytest.mark.parametrize(
    ("rank", "placements", "local", "offset", "text"),
    [
        (3, [Shard(0), Shard(1)], (2, 3), (2, 3), "Shard(dim=0), Shard(dim=1)"),
        (1, [Shard(0), Shard(1)], (2, 3), (0, 3), "Shard(dim=0), Shard(dim=1)"),
        (3, [Replicate(), Shard(1)], (4, 3), (0, 3), "Replicate(), Shard(dim=1)"),
        (2, [Shard(0), Replicate()], (2, 6), (2, 0), "Shard(dim=0), Replicate()"),
        (3, [Shard(1), Shard(1)], (4, 1), (0, 5), "Shard(dim=1), Shard(dim=1)"),  # 6 → 3+3 → 2+1: 3+2
    ],
)
def test_a_two_dimensional_mesh_composes_the_offsets(as_rank, rank, placements, local, offset, text):
    as_rank(rank, 4)
    s = shard_of(dtensor(torch.zeros(local), DeviceMesh("cpu", [[0, 1], [2, 3]]), placements, (4, 6)))
    assert (offset, text, local) == (s.shard_offset, s.placements, tuple(s.local.shape))


def test_the_same_mesh_on_another_rank_gives_that_rank_s_offset(as_rank):
    for rank, offset in ((0, (0,)), (1, (3,)), (0, (0,))):  # cached layouts are per mesh coordinate
        as_rank(rank, 2)
        local = torch.zeros(3 if rank == 0 else 2)
        assert offset == shard_of(dtensor(local, DeviceMesh("cpu", [0, 1]), [Shard(0)], (5,))).shard_offset


def test_a_strided_shard_is_not_one_block_so_it_has_no_offset(as_rank):
    as_rank(1, 2)
    d = dtensor(torch.zeros(2, 2), DeviceMesh("cpu", [0, 1]), [_StridedShard(0, split_factor=2)], (4, 2))
    s = shard_of(d)
    assert s.shard_offset is None and "_StridedShard(dim=0, sf=2)" == s.placements and (4, 2) == s.global_shape


def test_a_parameter_s_shard_is_read_without_an_autograd_op(as_rank):
    as_rank(0, 2)
    p = torch.nn.Parameter(dtensor(torch.ones(3, 2), DeviceMesh("cpu", [0, 1]), [Shard(0)], (5, 2)))
    with torch.enable_grad():
        s = shard_of(p)
    assert s.local.grad_fn is None and (0, 0) == s.shard_offset


@pytest.mark.parametrize(
    ("wrapped", "name"),
    [
        ("_fsdp_wrapped_module.layers.0._fsdp_wrapped_module.weight", "layers.0.weight"),
        ("layers.0._checkpoint_wrapped_module.attn.bias", "layers.0.attn.bias"),
        ("_orig_mod.fc.weight", "fc.weight"),
        ("module.fc.weight", "module.fc.weight"),  # a user's own 'module' stays (DDP is unwrapped earlier)
        ("fc.weight", "fc.weight"),
    ],
)
def test_original_names_drop_the_segments_wrappers_insert(wrapped, name):
    assert name == original_name(wrapped)


def test_module_type_is_the_class_the_user_wrote():
    assert "Linear" == module_type(torch.nn.Linear(2, 2))
    from torch.distributed.fsdp import FSDPModule

    swapped = torch.nn.Linear(2, 2)
    swapped.__class__ = type("FSDPLinear", (FSDPModule, torch.nn.Linear), {})  # what fully_shard does
    assert "Linear" == module_type(swapped)
