"""Data preparation scripts of the SR recipes on tiny generated images: sub-images (basicsr's
windows and names), MATLAB-bicubic LR, Real-ESRGAN's multi-scale set, meta-info files (read
back by the real-world training set) and LMDB packing (basicsr's layout)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import vmambair  # noqa: F401  (before basicsr)

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # process pools pickle its functions by module name
    spec.loader.exec_module(module)
    return module


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(folder: Path, name: str, img) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), img)
    return folder / name


def test_extract_subimages_windows_and_names(tmp_path, capsys):
    big = _img(100, 130, 1)
    _write(tmp_path / "hr", "0001.png", big)
    _write(tmp_path / "hr", "0002.png", _img(30, 30, 2))  # smaller than the crop
    extract = _script("extract_subimages").main
    out = tmp_path / "sub"
    assert extract(["-i", str(tmp_path / "hr"), "-o", str(out), "--crop-size", "48", "--step", "24",
                    "--workers", "1"]) == 0
    cap = capsys.readouterr()
    assert "sub-images" in cap.err and "0002.png" in cap.err and "smaller than the crop" in cap.err
    # rows start at 0, 24, 48 (+52 for the 4 px left), columns at 0, 24, 48, 72 (+82): 4 x 5 windows.
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"0001_s{k:03d}.png" for k in range(1, 21)]
    read = lambda k: cv2.imread(str(out / f"0001_s{k:03d}.png"), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert np.array_equal(read(1), big[0:48, 0:48])
    assert np.array_equal(read(5), big[0:48, 82:130])
    assert np.array_equal(read(6), big[24:72, 0:48])
    assert np.array_equal(read(20), big[52:100, 82:130])

    # --thresh-size 8: the 4 px left at the bottom are dropped, the 10 px at the right are not.
    out2 = tmp_path / "sub2"
    assert extract(["-i", str(tmp_path / "hr"), "-o", str(out2), "--crop-size", "48", "--step", "24",
                    "--thresh-size", "8", "--keep-small", "--workers", "1"]) == 0
    names = sorted(p.name for p in out2.iterdir())
    assert len([n for n in names if n.startswith("0001_")]) == 15 and "0002_s001.png" in names

    # The command line with a process pool writes the same files.
    out3 = tmp_path / "sub3"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "extract_subimages.py"), "-i", str(tmp_path / "hr"),
                          "-o", str(out3), "--crop-size", "48", "--step", "24", "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Wrote 20 sub-images of 2 images" in res.stdout
    assert all(np.array_equal(cv2.imread(str(p)), cv2.imread(str(out3 / p.name))) for p in out.iterdir())

    assert extract(["-i", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_make_bicubic_lr_matlab_bicubic_and_mod_crop(tmp_path, capsys):
    from basicsr.utils.matlab_functions import imresize
    hr = _img(48, 40, 3)
    _write(tmp_path / "hr", "a.png", hr)
    make_lr = _script("make_bicubic_lr").main
    assert make_lr(["-i", str(tmp_path / "hr"), "-o", str(tmp_path / "lr"), "--workers", "1"]) == 0
    lr = cv2.imread(str(tmp_path / "lr" / "a.png"))
    assert lr.shape == (12, 10, 3)
    expected = np.clip(np.round(imresize(hr.astype(np.float32) / 255, 0.25) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(lr, expected)
    # A flat image stays flat under MATLAB's bicubic (the kernel sums to 1).
    _write(tmp_path / "flat", "f.png", np.full((16, 16, 3), 77, np.uint8))
    assert make_lr(["-i", str(tmp_path / "flat"), "-o", str(tmp_path / "flat_lr"), "--workers", "1"]) == 0
    assert (cv2.imread(str(tmp_path / "flat_lr" / "f.png")) == 77).all()

    # Sizes that are not multiples of 4: skipped with a warning, or cropped with --mod-crop-dir.
    _write(tmp_path / "odd", "b.png", _img(50, 43, 4))
    assert make_lr(["-i", str(tmp_path / "odd"), "-o", str(tmp_path / "odd_lr"), "--workers", "1"]) == 1
    assert "not a multiple of 4" in capsys.readouterr().err
    assert make_lr(["-i", str(tmp_path / "odd"), "-o", str(tmp_path / "odd_lr"), "--mod-crop-dir",
                    str(tmp_path / "odd_hr"), "--workers", "1"]) == 0
    assert cv2.imread(str(tmp_path / "odd_hr" / "b.png")).shape == (48, 40, 3)
    assert cv2.imread(str(tmp_path / "odd_lr" / "b.png")).shape == (12, 10, 3)


def test_generate_multiscale_real_esrgan_scales(tmp_path, capsys):
    _write(tmp_path / "hr", "x.png", _img(450, 600, 5))
    _write(tmp_path / "hr2", "y.png", _img(500, 420, 6))
    assert _script("generate_multiscale").main(["-i", str(tmp_path / "hr"), str(tmp_path / "hr2"),
                                               "-o", str(tmp_path / "ms"), "--workers", "1"]) == 0
    assert "multi-scale" in capsys.readouterr().err
    size = lambda n: cv2.imread(str(tmp_path / "ms" / n)).shape[:2]  # noqa: E731  (h, w)
    assert size("xT0.png") == (337, 450) and size("xT1.png") == (225, 300) and size("xT2.png") == (150, 200)
    assert size("xT3.png") == (400, 533)  # shortest edge 400
    assert size("yT3.png") == (476, 400)
    assert len(list((tmp_path / "ms").iterdir())) == 8


def test_generate_meta_info_feeds_the_training_set(tmp_path, capsys):
    root = tmp_path / "DF2K_OST_sub"
    _write(root / "DF2K", "b.png", _img(20, 24, 7))
    _write(root / "DF2K", "a.png", _img(20, 24, 8))
    _write(root / "OST" / "animal", "c.png", _img(16, 16, 9))
    (root / "OST" / "broken.png").write_bytes(b"not an image")
    meta = tmp_path / "meta.txt"
    gen = _script("generate_meta_info").main
    assert gen(["-i", str(root / "DF2K"), str(root / "OST"), "--root", str(root), "--meta-info", str(meta)]) == 0
    assert "broken.png" in capsys.readouterr().err
    assert meta.read_text().splitlines() == ["DF2K/a.png", "DF2K/b.png", "OST/animal/c.png"]
    assert gen(["-i", str(root / "DF2K"), "--root", str(root), "--meta-info", str(meta), "--with-shape"]) == 0
    assert meta.read_text().splitlines() == ["DF2K/a.png (20,24,3)", "DF2K/b.png (20,24,3)"]
    assert gen(["-i", str(tmp_path), "--root", str(root), "--meta-info", str(meta)]) == 2
    assert "not inside --root" in capsys.readouterr().err

    from vmambair.data.realesrgan_dataset import list_gt_files
    assert list_gt_files(str(root), str(meta)) == [str(root / "DF2K" / "a.png"), str(root / "DF2K" / "b.png")]


def test_create_lmdb_basicsr_layout(tmp_path, capsys):
    lmdb = pytest.importorskip("lmdb")
    imgs = {"p/one": _img(12, 10, 10), "two": _img(8, 8, 11)}
    for key, img in imgs.items():
        _write(tmp_path / "src" / Path(key).parent, Path(key).name + ".png", img)
    dst = tmp_path / "db.lmdb"
    create = _script("create_lmdb").main
    assert create(["-i", str(tmp_path / "src"), "-o", str(dst), "--workers", "1"]) == 0
    meta = sorted((dst / "meta_info.txt").read_text().splitlines())
    assert meta == ["p/one.png (12,10,3) 1", "two.png (8,8,3) 1"]
    env = lmdb.open(str(dst), readonly=True, lock=False)
    with env.begin() as txn:
        for key, img in imgs.items():
            buf = np.frombuffer(txn.get(key.encode()), np.uint8)
            assert np.array_equal(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), img)
    env.close()
    capsys.readouterr()
    assert create(["-i", str(tmp_path / "src"), "-o", str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    assert create(["-i", str(tmp_path / "src"), "-o", str(tmp_path / "db")]) == 2
    assert ".lmdb" in capsys.readouterr().err
