"""The sync-free Alg. 1 iteration: SAM's numbers over batched objects, its structure, and its host-sync count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medpipe.finetune import objective as O
from medpipe.finetune.host_syncs import HostSyncCounter
from medpipe.models import batched_decoding as B
from medpipe.models.attention import set_fused_attention
from medpipe.models.sam import build_sam


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_sam("tiny")
    with torch.no_grad():  # SAM's embeddings are trained, not zero; make every term visible
        for param in model.prompt_encoder.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model


def _masks(size=128):
    masks = torch.zeros(2, 3, size, size)
    masks[0, 0, 20:80, 30:90] = 1
    masks[0, 1, 50:60, 10:20] = 1
    masks[0, 2, 100:, 100:] = 1
    masks[1, 0] = 1  # fills the image: no negative point
    masks[1, 1, 5:30, 5:100] = 1
    masks[1, 2, 60:70, 60:61] = 1
    return masks


def test_own_prompt_encoder_equals_sams_bitwise(sam):
    pe = sam.prompt_encoder
    gen = torch.Generator().manual_seed(0)
    points = torch.randint(0, 256, (4, 5, 2), generator=gen).float()
    labels = torch.tensor([[1, 0, 1, -1, 0], [1, 1, 0, 0, -1], [1, -1, -1, 0, 1], [1, 0, 0, 0, 0]])
    boxes = torch.tensor([[10.0, 20.0, 80.0, 90.0], [0.0, 0.0, 256.0, 256.0], [3.5, 7.25, 9.0, 11.0],
                          [100.0, 50.0, 200.0, 60.0]])
    masks = torch.randn(4, 1, 64, 64, generator=gen)
    for p, b, m in [(points, None, None), (points, boxes, None), (None, boxes, None), (points[:, :1], None, masks),
                    (points, boxes, masks)]:
        ref_sparse, ref_dense = pe(points=(p, labels[:, : p.shape[1]]) if p is not None else None, boxes=b, masks=m)
        sparse, dense = B.encode_prompts(pe, p, labels[:, : p.shape[1]] if p is not None else None, b, m, 4)
        assert torch.equal(sparse, ref_sparse) and torch.equal(dense, ref_dense)
    assert torch.equal(B.dense_pe(pe), pe.get_dense_pe())


def test_positional_encoding_stays_fp32_under_autocast(sam):
    pe = sam.prompt_encoder
    coords = torch.tensor([[[511.0, 300.0], [512.0, 300.0]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = B.embed_coords(pe, coords)
        dense = B.dense_pe(pe)
    assert emb.dtype == torch.float32 and dense.dtype == torch.float32
    assert not torch.equal(emb[0, 0], emb[0, 1])  # a 1 px step stays visible
    torch.testing.assert_close(emb, B.embed_coords(pe, coords), rtol=0, atol=0)


def test_batched_decoder_equals_one_call_per_image(sam):
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(2, 64, 16, 16, generator=gen)
    points = torch.randint(0, 256, (6, 3, 2), generator=gen).float()
    labels = torch.tensor([[1, 0, 1]] * 6)
    for multimask, pts, lab in [(True, points[:, :1], labels[:, :1]), (False, points, labels)]:
        sparse, dense = B.encode_prompts(sam.prompt_encoder, pts, lab, None, None, 6)
        per_object = embeddings[:, None].expand(-1, 3, -1, -1, -1).flatten(0, 1)
        low, iou = B.decode_objects(sam.mask_decoder, per_object, B.dense_pe(sam.prompt_encoder), sparse, dense,
                                    multimask)
        for b in range(2):
            rows = slice(3 * b, 3 * b + 3)
            ref_low, ref_iou = sam.mask_decoder(image_embeddings=embeddings[b: b + 1],
                                                image_pe=sam.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse[rows],
                                                dense_prompt_embeddings=dense[rows],
                                                multimask_output=multimask)
            torch.testing.assert_close(low[rows], ref_low, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[rows], ref_iou, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", [(64, 256, 128), (64, 256), (16, 64, 40)])
def test_resize_matrix_equals_bilinear_interpolation(sizes):
    low = torch.randn(3, 2, sizes[0], sizes[0], generator=torch.Generator().manual_seed(2))
    expected = low
    for size in sizes[1:]:
        expected = F.interpolate(expected, (size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(B.resize_logits(low, sizes), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_deterministic_prompts_give_the_reference_loss(sam, use_mask):
    """Undistorted boxes and one pass: the prompts are fixed, so both loops compute the same loss."""
    masks = _masks()
    emb = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(3))
    kwargs = dict(use_box=True, use_mask=use_mask, n_steps=0, box_distortion=0.0)
    new = O.alg1_loss(sam, emb, masks, [np.random.default_rng(i) for i in range(2)], **kwargs)
    ref = O.alg1_loss_reference(sam, emb, masks, [np.random.default_rng(i) for i in range(2)], **kwargs)
    for key in ("loss", "mask_loss", "iou_loss"):
        torch.testing.assert_close(new[key], ref[key], rtol=1e-5, atol=1e-6)


def test_iteration_structure_one_decoder_call_per_pass(sam, monkeypatch):
    calls = []
    decode = B.decode_objects

    def spy(decoder, embeddings, image_pe, sparse, dense, multimask):
        calls.append({"n": embeddings.shape[0], "tokens": sparse.shape[1], "multimask": multimask,
                      "dense": dense.detach().clone(), "pe": image_pe})
        out = decode(decoder, embeddings, image_pe, sparse, dense, multimask)
        calls[-1]["low"] = out[0].detach()
        calls[-1]["iou"] = out[1].detach()
        return out

    monkeypatch.setattr(B, "decode_objects", spy)
    emb = torch.randn(2, 64, 16, 16)
    out = O.alg1_loss(sam, emb, _masks(), [np.random.default_rng(i) for i in range(2)], use_box=False, use_mask=True,
                      n_steps=3, box_distortion=0.025)
    assert len(calls) == 4 and all(c["n"] == 6 for c in calls)  # 2 images x 3 objects, one call per pass
    assert [c["multimask"] for c in calls] == [True, False, False, False]
    assert [c["tokens"] for c in calls] == [2, 4, 6, 8]  # points (+ SAM's padding point): 1, 3, 5, 7
    assert all(c["pe"] is calls[0]["pe"] for c in calls)  # dense PE once per iteration
    # pass 0: the zero mask prompt; pass 1: the best (highest predicted IoU) low-res logits of pass 0
    best = calls[0]["iou"].argmax(1)
    prompt = calls[0]["low"][torch.arange(6), best][:, None]
    expected = sam.prompt_encoder.mask_downscaling(prompt)
    torch.testing.assert_close(calls[1]["dense"], expected)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_host_syncs_per_iteration_at_most_ten(sam):
    """Encoder (fused attention), the interactive loss over 8 passes, backward, fused AdamW and the one
    logging transfer: what would make the host wait on CUDA is counted on CPU."""
    torch.manual_seed(0)
    model = build_sam("tiny").train()
    set_fused_attention(model, True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    images, masks = torch.randn(2, 3, 256, 256), _masks()
    for use_box in (False, True):
        with HostSyncCounter() as syncs:
            optimizer.zero_grad(set_to_none=True)
            losses = O.alg1_loss(model, model.image_encoder(images), masks,
                                 [np.random.default_rng(i) for i in range(2)], use_box=use_box, use_mask=True,
                                 n_steps=7, box_distortion=0.025)
            losses["loss"].backward()
            optimizer.step()
            logged = torch.stack([v.detach() for v in losses.values()])
        # + 1: the trainer's one logging transfer (``logged.tolist()``, a device->host copy on CUDA; on
        # CPU ``tolist`` reads memory without dispatching, so it is added by hand)
        assert syncs.total + 1 <= 10, dict(syncs.ops)
        assert syncs.total == 0, dict(syncs.ops)  # today: none besides the logging transfer
        assert len(logged.tolist()) == 3
    with HostSyncCounter() as syncs:  # the former loop, for scale: the counter does see syncs
        O.alg1_loss_reference(model, model.image_encoder(images), masks, [np.random.default_rng(0)] * 2,
                              use_box=False, use_mask=True, n_steps=7, box_distortion=0.025)["loss"].backward()
    assert syncs.total > 100


def test_trainer_step_host_syncs_at_most_ten(tmp_path):
    """The trainer's whole ``train_step`` (data to the device, draws, encoder, Alg. 1, backward, the
    optimiser as on CUDA: fused AdamW, logging) on a miniature corpus. Counted conservatively: on CPU
    every tensor looks like a device tensor, so the two ``int()`` reads of the batch's sample positions
    (a CPU tensor on CUDA too) count, as does the logging transfer."""
    from medpipe.finetune import distributed as D
    from medpipe.finetune.command import store_map
    from medpipe.finetune.data import collate
    from medpipe.finetune.trainer import set_up, train_step

    from finetune_fixtures import make_corpus, tiny_settings

    table, stores = make_corpus(tmp_path)
    run = set_up(tiny_settings(p_mask=1.0, n_steps=7), table, store_map(stores), tmp_path / "run", 0, D.setup())
    run.optimizer = torch.optim.AdamW([p for p in run.model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda it: 1.0)
    batch = collate([run.train_ds[p] for p in (0, 1)])
    with HostSyncCounter() as syncs:
        row = train_step(run, batch, 0, torch.autocast("cpu", enabled=False))
    assert syncs.total + 1 <= 10, dict(syncs.ops)  # + 1: the logging transfer (tolist, invisible on CPU)
    print(f"host syncs of one train_step: {syncs.total} + 1 ({dict(syncs.ops)})")
    assert np.isfinite(row["loss"]) and set(row) >= {"loss", "mask_loss", "iou_loss", "lr"}
