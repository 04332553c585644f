"""Option validation: every mistake gives one message naming the key, and exit code 2."""
from pathlib import Path

import pytest
import yaml

import vmambair  # noqa: F401
from vmambair.config import OptionsError, load_options
from vmambair.apps.train import train_main

from tests.helpers import ROOT, tiny_options


@pytest.fixture()
def opt_file(tmp_path):
    return tiny_options(tmp_path)


def _error(path, *overrides, is_train=True):
    with pytest.raises(OptionsError) as info:
        load_options(path, list(overrides), is_train=is_train)
    return str(info.value)


def test_valid_tiny_options_load(opt_file):
    opt = load_options(opt_file)
    assert opt.train.optim_g["lr"] == pytest.approx(3e-4)
    assert opt.datasets["train"].phase == "train"
    assert Path(opt.path.experiments_root).name == "tiny"
    assert Path(opt.datasets["train"].dataroot_gt).is_dir()


def test_derain_recipe_validates(tmp_path):
    tiny_options(tmp_path)  # creates tmp/Datasets/{train/Rain13K,test/Rain100L}
    opt = load_options(ROOT / "options" / "derain.yml", [f"path.data_root={tmp_path / 'Datasets'}"])
    ds = opt.datasets["train"]
    assert ds.mini_gt_sizes == [128, 160, 192, 256, 320, 384] and ds.mini_batch_sizes == [8, 5, 3, 2, 1, 1]
    assert sum(ds.iters) == opt.train.total_iter == 300000
    assert opt.train.scheduler["eta_mins"] == [3e-4, 1e-6]
    assert opt.network_g["num_blocks"] == [4, 4, 6, 8]


def test_misspelt_key_suggests_closest(opt_file):
    msg = _error(opt_file, "train.totl_iter=5")
    assert "train.totl_iter" in msg and "total_iter" in msg


def test_wrong_type_names_key(opt_file):
    msg = _error(opt_file, "train.total_iter=many")
    assert "train.total_iter" in msg and "int" in msg


def test_unknown_registry_name_suggests(opt_file):
    msg = _error(opt_file, "network_g.type=VmambaIr")
    assert "network_g.type" in msg and "VmambaIR" in msg
    msg = _error(opt_file, "train.optim_g.type=AdamX")
    assert "train.optim_g.type" in msg and "Adam" in msg
    msg = _error(opt_file, "val.metrics.psnr.type=calculate_psnrr")
    assert "calculate_psnr" in msg


def test_constructor_argument_checked(opt_file):
    msg = _error(opt_file, "network_g.num_block=[1,1,1,1]")
    assert "network_g.num_block" in msg and "num_blocks" in msg
    msg = _error(opt_file, "train.scheduler.eta_min=[0.1]")
    assert "eta_mins" in msg


def test_missing_dataset_folder(opt_file):
    msg = _error(opt_file, "datasets.train.dataroot_gt=nowhere/target")
    assert "datasets.train.dataroot_gt" in msg and "nowhere" in msg and "data_root" in msg


def test_progressive_lists_must_match(opt_file):
    msg = _error(opt_file, "datasets.train.iters=[3]")
    assert "mini_batch_sizes" in msg


def test_train_py_exits_2_before_work(opt_file, capsys):
    assert train_main(["-opt", str(opt_file), "--set", "train.optim_g.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "train.optim_g.lrr" in err and "lr" in err
    assert not (opt_file.parent / "experiments").exists()


def test_network_value_refused_by_the_network_exits_2(opt_file, capsys):
    """activation_checkpointing is typed Union[bool, str]: the validator lets both kinds through,
    the network refuses unknown modes, and train.py reports that as an options error."""
    load_options(opt_file, ["network_g.activation_checkpointing=ffn"], is_train=True)
    assert "activation_checkpointing" in _error(opt_file, "network_g.activation_checkpointing=3")
    assert train_main(["-opt", str(opt_file), "--set", "network_g.activation_checkpointing=layers"]) == 2
    err = capsys.readouterr().err
    assert "activation_checkpointing" in err and "'layers'" in err and "ffn" in err
    assert "Traceback" not in err


def test_scientific_notation_without_dot_is_float(tmp_path):
    path = tiny_options(tmp_path)
    raw = yaml.safe_load(path.read_text())
    text = path.read_text().replace(f"lr: {raw['train']['optim_g']['lr']}", "lr: 3e-4")
    path.write_text(text)
    assert load_options(path).train.optim_g["lr"] == pytest.approx(3e-4)
