"""The fused encoder attention equals segment_anything's, forward and gradients, with the same keys."""

from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from medpipe.models.attention import FusedAttention, relative_positions, set_fused_attention, uses_fused_attention
from medpipe.models.sam import build_sam


def _encoder(img_size: int, window: int) -> ImageEncoderViT:
    """A small ViT encoder with a windowed block (block 0) and a global block (block 1)."""
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                              out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, global_attn_indexes=[1], window_size=window)
    with torch.no_grad():  # SAM zero-initialises the tables; trained ones are not zero
        for module in encoder.modules():
            if isinstance(module, Attention):
                module.rel_pos_h.normal_(0, 0.5)
                module.rel_pos_w.normal_(0, 0.5)
    return encoder


def _forward_and_grads(encoder, image, fused: bool, autocast: bool = False):
    set_fused_attention(encoder, fused)
    encoder.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = encoder(image)
    (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach().float(), {n: p.grad.detach().clone() for n, p in encoder.named_parameters()}


@pytest.mark.parametrize("img_size,window", [(128, 4), (160, 4)], ids=["even-windows", "padded-windows"])
def test_fused_equals_reference_forward_and_gradients_fp32(img_size, window):
    encoder = _encoder(img_size, window)  # 160 px: a 10x10 grid in 4x4 windows is padded to 12x12
    image = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _forward_and_grads(encoder, image, fused=False)
    out, grads = _forward_and_grads(encoder, image, fused=True)
    assert uses_fused_attention(encoder)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, rtol=1e-4, atol=1e-4, msg=name)
    assert ref_grads["blocks.1.attn.rel_pos_h"].abs().max() > 0  # the bias's gradient is exercised


def test_fused_matches_reference_under_bf16_autocast():
    encoder = _encoder(160, 4)
    image = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    exact, exact_grads = _forward_and_grads(encoder, image, fused=False)
    ref_out, ref_grads = _forward_and_grads(encoder, image, fused=False, autocast=True)
    out, grads = _forward_and_grads(encoder, image, fused=True, autocast=True)
    # the fused bf16 forward is as close to the fp32 reference as the reference's own bf16 forward is
    ref_err = (ref_out - exact).abs().max()
    assert (out - exact).abs().max() <= 2 * ref_err + 1e-3
    for name in ("blocks.1.attn.qkv.weight", "blocks.0.attn.rel_pos_w", "patch_embed.proj.weight"):
        scale = exact_grads[name].abs().max()
        ref_gerr = (ref_grads[name] - exact_grads[name]).abs().max() / scale
        gerr = (grads[name] - exact_grads[name]).abs().max() / scale
        assert gerr <= 2 * ref_gerr + 2e-2, name


def test_switch_keeps_keys_and_tensors_and_skips_tinyvit():
    sam = build_sam("tiny")
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    assert set_fused_attention(sam, True) == 2  # one attention module per block
    assert all(type(b.attn) is FusedAttention for b in sam.image_encoder.blocks)
    after = sam.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert set_fused_attention(sam, False) == 2 and not uses_fused_attention(sam)
    assert set_fused_attention(build_sam("lite_medsam"), True) == 0


def test_relative_positions_equal_reference_and_stay_on_the_tables_device():
    table = torch.randn(2 * 7 - 1, 5)
    torch.testing.assert_close(relative_positions(7, 7, table), get_rel_pos(7, 7, table), rtol=0, atol=0)
    resized = torch.randn(9, 5)  # a table of another length is resized as the reference does
    torch.testing.assert_close(relative_positions(7, 7, resized), get_rel_pos(7, 7, resized), rtol=0, atol=0)
    meta = relative_positions(7, 7, table.to("meta"))  # positions built where the table lives
    assert meta.device.type == "meta" and meta.shape == (7, 7, 5)


def test_fused_encoder_builds_positions_on_the_device():
    """On the meta device (a stand-in for CUDA), segment_anything's get_rel_pos indexes the table with a
    CPU arange (a host-to-device copy per call, and its backward); the fused encoder does not."""
    from medpipe.finetune.host_syncs import HostSyncCounter

    encoder = build_sam("tiny").image_encoder.to("meta")
    image = torch.empty(1, 3, 256, 256, device="meta")
    counts = {}
    for fused in (True, False):
        set_fused_attention(encoder, fused)
        with HostSyncCounter() as syncs:
            encoder(image).sum().backward()
        counts[fused] = syncs.total
    assert counts == {True: 0, False: 8}  # reference: 2 blocks x (h, w) tables, forward and backward


def test_training_uses_the_fused_attention_unless_configured_and_evaluation_never(tmp_path):
    from medpipe.finetune import distributed as D
    from medpipe.finetune.command import store_map
    from medpipe.finetune.trainer import set_up

    from finetune_fixtures import make_corpus, tiny_settings

    table, stores = make_corpus(tmp_path)
    fused = set_up(tiny_settings(), table, store_map(stores), tmp_path / "a", 0, D.setup())
    assert fused.settings.attention == "fused" and uses_fused_attention(fused.sam)
    reference = set_up(tiny_settings(attention="reference"), table, store_map(stores), tmp_path / "b", 0, D.setup())
    assert not uses_fused_attention(reference.sam)
    assert not uses_fused_attention(build_sam("tiny"))  # what evaluation builds: segment_anything's forward
