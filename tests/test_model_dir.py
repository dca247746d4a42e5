import json
import pickle

import pytest
import torch

from imagesynth import ModelFileError, load_model, load_weights, save_model
from imagesynth.io.model_dir import Component, model_hash


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))


def test_round_trip_single(tmp_path):
    net = _net()
    cfg = {"channels": [3, 4, 3], "kernel": 3}
    path = save_model(
        tmp_path / "m",
        Component(cfg, net.state_dict()),
        family="toy",
        dataset={"name": "shapes", "size": 32},
        recipe={"lr": 1e-3},
        metrics={"fid": 12.5},
    )
    files = load_model(path)
    assert files.family == "toy" and files.config == cfg and files.components == [""]
    assert files.info["metrics"]["fid"] == 12.5 and files.info["versions"]["torch"]
    assert files.info["components"][""]["parameters"] == sum(p.numel() for p in net.parameters())
    other = _net()
    for p in other.parameters():
        p.data.zero_()
    other.load_state_dict(files.state_dict())
    for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(model_hash(path)) == 10


def test_multi_component_fp16_and_overwrite(tmp_path):
    g, d = _net(), _net()
    comps = {
        "generator": Component({"z": 100}, g.state_dict()),
        "discriminator": Component({}, d.state_dict()),
    }
    save_model(tmp_path / "gan", comps, family="gan", config={"kind": "dcgan"}, dtype="float16")
    files = load_model(tmp_path / "gan")
    assert set(files.components) == {"generator", "discriminator"}
    assert files.config == {"kind": "dcgan"} and files.component_config("generator") == {"z": 100}
    assert all(t.dtype == torch.float16 for t in files.state_dict("generator").values())
    save_model(tmp_path / "gan", comps, family="gan2")  # replaced atomically, no leftovers
    assert load_model(tmp_path / "gan").family == "gan2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]
    with pytest.raises(ModelFileError, match="no component 'x'"):
        files.state_dict("x")


def test_pickle_refused_unless_allowed(tmp_path):
    sd = _net().state_dict()
    torch.save(sd, tmp_path / "w.ckpt")
    with pytest.raises(ModelFileError, match=r"pickle.*allow_pickle=True"):
        load_weights(tmp_path / "w.ckpt")
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(tmp_path / "w.ckpt")
    loaded = load_weights(tmp_path / "w.ckpt", allow_pickle=True)
    assert set(loaded) == set(sd)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "nested.pt")
    assert set(load_weights(tmp_path / "nested.pt", allow_pickle=True)) == set(sd)


def test_pickle_weights_inside_model_dir_refused(tmp_path):
    path = save_model(tmp_path / "m", Component({}, _net().state_dict()), family="toy")
    (path / "model.safetensors").unlink()
    torch.save(_net().state_dict(), path / "model.bin")
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path).state_dict()
    assert load_model(path, allow_pickle=True).state_dict()


def test_malicious_pickle_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError):
        load_weights(tmp_path / "evil.pt")
    with pytest.raises(ModelFileError):  # even when allowed, the weights-only loader refuses
        load_weights(tmp_path / "evil.pt", allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_bad_model_dirs(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=r"no imagesynth\.json"):
        load_model(tmp_path / "empty")
    path = save_model(tmp_path / "m", Component({}, _net().state_dict()), family="toy")
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(path).state_dict()
    (path / "imagesynth.json").write_text("{broken")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    (path / "imagesynth.json").write_text(
        json.dumps({"format": "imagesynth-model", "family": "x", "format_version": 99})
    )
    with pytest.raises(ModelFileError, match="newer imagesynth"):
        load_model(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_weights(tmp_path / "junk.safetensors")
