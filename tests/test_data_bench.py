"""`python -m trainables.bench --data DIR` runs end to end on a small image folder and prints every line it
promises, with numbers (timings are never asserted); a bad --data exits 2 with one `error:` line."""

from __future__ import annotations

import re

import pytest
from imagefolders import make_image_folder

from trainables.bench import main

X = r"\d+(?:\.\d+)?"  # a printed number
RATIO = rf"{X} IQR \[{X}, {X}\]; rounds: {X}"  # one round: one ratio
PROMISED = {
    "throughput figures": rf"throughput, images/s \(median of rounds\): ours \(StreamFeed\) {X}, torchvision "
                          rf"ImageFolder\+DataLoader {X}, Ray Data read_binary_files\+map_batches {X}$",
    "ours vs torchvision": rf"throughput ours / torchvision: {RATIO} \(target >= 0\.9: (met|NOT met) by the "
                           r"whole IQR\)$",
    "ours vs Ray Data": rf"throughput ours / Ray Data: {RATIO} \(> 1: ours faster\)$",
    "trial RSS": rf"memory: peak RSS .*: N=32 {X} MiB, 2N=64 {X} MiB; ratio 2N/N {RATIO} \(target <= 1\.2: "
                 rf"(met|NOT met) by the whole IQR\); growth [+-]{X} MiB .* \(ru_maxrss\) {X} / {X} MiB$",
    "object store": rf"memory: object store for the streamed dataset \(its catalog, (ray\.put object_size|pickled "
                    rf"size)\): N {X} KiB, 2N {X} KiB \(decoded in memory instead: {X} / {X} MiB\)$",
    "epochs": rf"epochs: resnet8 width \d+, lars, batch 16, 64 images at 32 px, .*: memory \(MemoryFeed\) {X} s, "
              rf"streaming \(StreamedFeed\) {X} s \(medians\); ratio streaming/memory {RATIO} \(memory",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("bench") / "folder", train=64, val=8, size=40, classes=4)


def test_every_promised_line_with_numbers(folder, capsys):
    main(["--data", str(folder), "--rounds", "1", "--batch-size", "16", "--image-size", "32", "--workers", "1"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert lines[0].startswith("data: imagefolder at ")
    assert "64 training images, 4 classes, decoded to 32 px" in lines[0]
    for promise, pattern in PROMISED.items():
        assert any(re.search(pattern, line) for line in lines), f"no {promise} line in:\n" + "\n".join(lines)


def test_flags_skip_sections(folder, capsys):
    main(["--data", str(folder), "--batch-size", "16", "--no-throughput", "--no-memory", "--no-epochs"])
    assert len(capsys.readouterr().out.splitlines()) == 1  # the header alone
    main(["--data", str(folder), "--dataset", "imagenet", "--image-size", "32", "--batch-size", "16",
          "--no-throughput", "--no-memory"])
    assert "epochs: skipped (imagenet always streams" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing", "no train folder", "too few images", "bad workers"])
def test_bad_data_exits_2_with_one_error_line(folder, tmp_path, capsys, problem):
    (tmp_path / "empty").mkdir()
    argv = {"missing": ["--data", str(tmp_path / "nowhere")],
            "no train folder": ["--data", str(tmp_path / "empty")],
            "too few images": ["--data", str(folder), "--batch-size", "64"],
            "bad workers": ["--data", str(folder), "--workers", "0"]}[problem]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ")
