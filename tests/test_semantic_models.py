"""SAM-UNETR 2D, MA-SAM 3D and Swin UNETR: shapes, parameter counts, adapters, positional embeddings."""

import pytest
import torch

from medpipe.models.ma_sam import Adapter3D, blockwise_predict, build_ma_sam
from medpipe.models.posemb import interpolate_abs_pos, interpolate_rel_pos, resize_encoder
from medpipe.models.sam import build_sam
from medpipe.models.sam_unetr import build_sam_unetr
from medpipe.models.sem_decoder import decoder_for, middle_channels, save_decoder
from medpipe.models.swin_unetr import build_swin_unetr, sliding_window_logits


def _n(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def sam():
    torch.manual_seed(0)
    return build_sam("tiny")


def _conv(i, o, k):
    return i * o * k * k + o


def _decoder_parameters(e, f0, out):
    """The UNETR decoder (no encoder skips, bilinear upsampling) counted by hand from its description."""
    f = [f0, f0 // 2, f0 // 4, f0 // 8]
    up = lambda i, o: _conv(i, o, 1)  # noqa: E731 - x2 bilinear + 1x1 conv
    deconv = lambda i, o: up(i, o) + _conv(o, o, 3) + 2 * o  # noqa: E731 - + 3x3 conv + batch norm
    block = lambda i, o: _conv(i, o, 3) + _conv(o, o, 3)  # noqa: E731 - instance norms have no parameters
    chain = deconv(e, f[0]) + deconv(f[0], f[1]) + deconv(f[1], f[2]) + deconv(f[2], f[3])
    levels = sum(up(a, b) + block(a, b) for a, b in zip(f[:-1], f[1:]))
    return chain + block(e, f[0]) + levels + up(f[3], f[3]) + block(2 * f[3], f[3]) + _conv(f[3], out, 1)


def test_sam_unetr_shape_parameters_and_sigmoid_outputs(sam):
    model = build_sam_unetr(sam, n_classes=4)
    out = model(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 4, 256, 256)
    assert 0 < out.min() and out.max() < 1  # sigmoid outputs, as the reference's UNETR
    # the encoder is SAM's (shared, all its parameters); the decoder is the e_sem class with 4 outputs
    assert model.encoder is sam.image_encoder
    assert _n(model.decoder) == _decoder_parameters(64, 128, 4)  # tiny: 64-ch embedding, widths 128 ... 16
    assert _n(model) == _n(sam.image_encoder) + _n(decoder_for(sam, out_channels=4))
    assert model.decoder.out_conv.weight.shape == (4, 16, 1, 1)
    convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(m.in_channels == 3 for m in convs)  # no full-resolution image skip


def test_sam_unetr_vit_b_decoder_is_the_reference_unetr_layout():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        vit_b = sam_model_registry["vit_b"]()
    decoder = decoder_for(vit_b, out_channels=3)
    assert decoder.config == {"in_channels": 256, "out_channels": 3, "initial_features": 64, "upsampling": "bilinear",
                              "activation": "sigmoid", "scale": 16}
    assert _n(decoder) == _decoder_parameters(256, 512, 3)
    assert [d.block[1].block.out_channels for d in (decoder.deconv1, decoder.deconv2, decoder.deconv3,
                                                     decoder.deconv4)] == [512, 256, 128, 64]
    # each level concatenates the upsampled features with half of its skip's channels: conv blocks F[i] -> F[i+1]
    assert [(b.block[1].in_channels, b.block[1].out_channels) for b in decoder.decoder.blocks] == [
        (512, 256), (256, 128), (128, 64)]
    assert decoder.decoder_head.block[1].in_channels == 128


def test_skips_contribute_their_middle_channels():
    skip = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 3)
    like = torch.zeros(2, 4, 3, 3)
    assert middle_channels(skip, like)[0, :, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="smaller"):
        middle_channels(like, skip)


def test_decoder_matches_torch_em_unetr_without_skip_connections(sam):
    """Our decoder and torch-em's UNETR(use_skip_connection=False) on the same weights: same outputs."""
    unetr = pytest.importorskip("torch_em.model.unetr")
    from medpipe.models.transforms import SAM_PIXELS, normalize_pixels

    for kind in ("bilinear", "transposed"):
        ours = decoder_for(sam, out_channels=3, upsampling=kind)
        for p in ours.parameters():
            torch.nn.init.normal_(p, std=0.1)
        ref = unetr.UNETR(img_size=256, backbone="sam", encoder=sam.image_encoder, out_channels=3, use_sam_stats=True,
                          final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
                          use_conv_transpose=kind == "transposed", initial_features=16)
        result = ref.load_state_dict(ours.state_dict(), strict=False)  # the reference's key layout
        assert not result.unexpected_keys and all(k.startswith("encoder.") for k in result.missing_keys)
        x = torch.rand(2, 3, 256, 256) * 255
        with torch.no_grad():
            assert torch.allclose(ref(x), ours(sam.image_encoder(normalize_pixels(x, SAM_PIXELS))), atol=1e-6)


def test_pretrained_decoder_init_copies_all_but_classifier(sam, tmp_path):
    torch.manual_seed(1)
    pretrained = decoder_for(sam, out_channels=2)  # the e_sem decoder: background, foreground
    for p in pretrained.parameters():
        torch.nn.init.normal_(p)
    pretrained.deconv1.block[2].running_mean.fill_(3.0)  # buffers travel too
    path = tmp_path / "run.decoder.pth"
    save_decoder(pretrained, pretrained.state_dict(), path)
    ref = pretrained.state_dict()
    # a binary dataset: 2 classes, the classifier's shape fits, it is still fresh (the reference drops out_conv)
    for n_classes in (3, 2):
        model = build_sam_unetr(build_sam("tiny"), n_classes=n_classes, decoder_file=path)
        for key, value in model.decoder.state_dict().items():
            if key.startswith("out_conv."):
                assert value.shape[0] == n_classes
                assert value.shape != ref[key].shape or not torch.equal(value, ref[key])
            else:
                assert torch.equal(value, ref[key]), key
    random = build_sam_unetr(build_sam("tiny"), n_classes=3)
    assert not torch.equal(random.decoder.base.block[1].weight, ref["base.block.1.weight"])


def test_pretrained_decoder_of_another_backbone_or_layout_is_refused(sam, tmp_path):
    from medpipe.models.sem_decoder import SemanticDecoder

    other = SemanticDecoder(in_channels=32, out_channels=2, initial_features=8)
    path = tmp_path / "other.decoder.pth"
    save_decoder(other, other.state_dict(), path)
    with pytest.raises(ValueError, match="other.decoder.pth: decoder in_channels 32"):
        build_sam_unetr(sam, n_classes=3, decoder_file=path)
    old = tmp_path / "old.decoder.pth"
    torch.save({"config": {"in_channels": 64, "out_channels": 1, "features": [64, 32, 16, 16], "scale": 16},
                "state_dict": {}}, old)
    with pytest.raises(ValueError, match="old.decoder.pth: decoder config .* older medpipe layout"):
        build_sam_unetr(sam, n_classes=3, decoder_file=old)


def test_abs_pos_interpolation_hand_cases():
    const = torch.full((1, 4, 4, 2), 3.0)
    assert torch.allclose(interpolate_abs_pos(const, 8), torch.full((1, 8, 8, 2), 3.0))
    # bicubic (Keys kernel, a = -0.75) of the ramp 0,1,2,3: output 3 <- source 1.25, taps 0..3 with weights
    # (-0.10546875, 0.87890625, 0.26171875, -0.03515625) -> 1.296875; output 4 mirrors it -> 1.703125
    ramp = torch.arange(4.0).view(1, 1, 4, 1).expand(1, 4, 4, 1)
    up = interpolate_abs_pos(ramp, 8)
    assert up.shape == (1, 8, 8, 1)
    assert torch.allclose(up[0, 2, 3:5, 0], torch.tensor([1.296875, 1.703125]), atol=1e-5)
    # linear rel-pos table 0..6 (length 2*4-1) -> 3 (2*2-1): j <- (j + 0.5) * 7 / 3 - 0.5
    rel = torch.arange(7.0)[:, None].repeat(1, 3)
    out = interpolate_rel_pos(rel, 3)
    assert out.shape == (3, 3)
    assert torch.allclose(out[:, 0], torch.tensor([2 / 3, 3.0, 16 / 3]), atol=1e-5)


def test_resize_encoder_interpolates_instead_of_zeroing(sam):
    encoder = sam.image_encoder
    with torch.no_grad():
        encoder.pos_embed.normal_()
        global_attn = encoder.blocks[1].attn
        global_attn.rel_pos_h.normal_()
        window_attn = encoder.blocks[0].attn
        window_before = window_attn.rel_pos_h.clone()
    resize_encoder(encoder, 128)
    assert encoder.img_size == 128
    assert encoder.pos_embed.shape == (1, 8, 8, 64)
    assert encoder.pos_embed.abs().sum() > 0  # the reference code left this at zero
    assert global_attn.rel_pos_h.shape == (15, 32) and global_attn.rel_pos_h.abs().sum() > 0
    assert torch.equal(window_attn.rel_pos_h, window_before)  # windows keep their size
    assert encoder(torch.randn(1, 3, 128, 128)).shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        resize_encoder(encoder, 100)


def test_ma_sam_shapes_and_adapter_parameters(sam):
    n_classes = 3
    model = build_ma_sam(sam, n_classes, input_size=64)
    x = torch.randn(2, 3, 4, 64, 64)
    assert model(x).shape == (2, n_classes, 4, 64, 64)
    # two adapters per block, each LN(64) + Linear(64->32, no bias) + Conv3d(32,32,(3,1,1)) + Linear(32->64, no bias)
    per_adapter = 2 * 64 + 64 * 32 + (32 * 32 * 3 + 32) + 32 * 64
    assert len(model.encoder.blocks) == 2
    assert sum(p.numel() for p in model.adapter_parameters()) == 2 * 2 * per_adapter
    # the original SAM is untouched (the 3D model works on a copy of the encoder)
    assert sam.image_encoder.img_size == 256


def test_ma_sam_with_silent_adapters_is_the_2d_encoder_per_slice(sam):
    model = build_ma_sam(sam, 2, input_size=64)
    for block in model.encoder.blocks:
        for adapter in (block.adapter_attn, block.adapter_mlp):
            torch.nn.init.zeros_(adapter.up.weight)
            assert adapter.up.bias is None and adapter.down.bias is None  # micro-sam's adapter linears
    reference = resize_encoder(build_sam("tiny").image_encoder, 64)
    reference.load_state_dict({k.replace(".block.", "."): v for k, v in model.encoder.state_dict().items()
                               if ".adapter_" not in k})
    slices = torch.randn(3, 3, 64, 64)
    for block in model.encoder.blocks:
        block.depth = 3
    assert torch.allclose(model.encoder(slices), reference(slices), atol=1e-5)


def test_adapters_mix_slices_only_along_z():
    torch.manual_seed(0)
    adapter = Adapter3D(8)
    x = torch.randn(1 * 5, 2, 2, 8)  # B=1, D=5
    base = adapter(x, depth=5)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1.0  # change one channel of one token of slice 0 (LayerNorm ignores a constant shift)
    diff = (adapter(x2, depth=5) - base).abs().sum(-1)
    assert diff[0, 0, 0] > 0 and diff[1, 0, 0] > 0  # itself and the next slice (kernel 3 in z)
    assert diff[2:].sum() == 0  # slices two away unaffected
    assert diff[:2, 1:].sum() == 0 and diff[:2, 0, 1].sum() == 0  # no in-plane mixing


def test_freeze_encoder_trains_only_adapters_decoder_and_head(sam):
    model = build_ma_sam(sam, 2, input_size=64, freeze_encoder=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(1, 3, 2, 64, 64)).mean().backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed
    assert all(".adapter_" in k or k.startswith(("decoder.", "head.")) for k in changed), changed
    assert any(".adapter_" in k for k in changed)


def test_blockwise_prediction_with_halo_equals_whole_volume():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, kernel_size=(3, 1, 1), padding=(1, 0, 0))
    volume = torch.randn(1, 11, 3, 3)
    with torch.no_grad():
        whole = conv(volume[None])[0]
        blocks = blockwise_predict(conv, volume, depth=5, halo=1)
    assert blocks.shape == (2, 11, 3, 3)
    assert torch.allclose(blocks, whole, atol=1e-6)
    with torch.no_grad():  # without a halo the block borders differ from the whole-volume result
        no_halo = blockwise_predict(conv, volume, depth=5, halo=0)
    assert not torch.allclose(no_halo, whole, atol=1e-6)
    with pytest.raises(ValueError, match="no core slices"):
        blockwise_predict(conv, volume, depth=2, halo=1)


def test_swin_unetr_shapes_padding_and_feature_size():
    torch.manual_seed(0)
    model = build_swin_unetr(1, 3, spatial_dims=2, feature_size=12).eval()
    with torch.no_grad():
        out = sliding_window_logits(model, torch.randn(1, 1, 40, 70), roi=(64, 64))
    assert out.shape == (1, 3, 40, 70)
    with pytest.raises(ValueError, match=r"patch \(32, 64\): every side must be a multiple of 32 and >= 64"):
        sliding_window_logits(model, torch.randn(1, 1, 40, 70), roi=(32, 64))
    model3d = build_swin_unetr(1, 2, spatial_dims=3, feature_size=12).eval()
    with torch.no_grad():
        assert model3d(torch.randn(1, 1, 64, 64, 64)).shape == (1, 2, 64, 64, 64)
    with pytest.raises(ValueError, match="divisible by 12"):
        build_swin_unetr(1, 2, spatial_dims=3, feature_size=16)
