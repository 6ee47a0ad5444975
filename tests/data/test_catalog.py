from pathlib import Path

import pytest

from medseg_bench.data.catalog import get_task, task_registry
from medseg_bench.errors import UnknownNameError, UsageError
from tests.conftest import write_task_file

MSD = {
    "Task01_BrainTumour": (4, 4, "MRI"),
    "Task02_Heart": (1, 2, "MRI"),
    "Task03_Liver": (1, 3, "CT"),
    "Task04_Hippocampus": (1, 3, "MRI"),
    "Task05_Prostate": (2, 3, "MRI"),
    "Task06_Lung": (1, 2, "CT"),
    "Task07_Pancreas": (1, 3, "CT"),
    "Task08_HepaticVessel": (1, 3, "CT"),
    "Task09_Spleen": (1, 2, "CT"),
    "Task10_Colon": (1, 2, "CT"),
}

# Training / test cases per task (dataset.json of each archive; ../shared/MSD_TASKS.md).
COUNTS = {
    "Task01_BrainTumour": (484, 266), "Task02_Heart": (20, 10), "Task03_Liver": (131, 70),
    "Task04_Hippocampus": (260, 130), "Task05_Prostate": (32, 16), "Task06_Lung": (63, 32),
    "Task07_Pancreas": (281, 139), "Task08_HepaticVessel": (303, 140), "Task09_Spleen": (41, 20),
    "Task10_Colon": (126, 64),
}


def test_all_ten_msd_tasks(home: Path) -> None:
    registry = task_registry()
    assert set(MSD) <= set(registry)
    for name, (channels, classes, imaging) in MSD.items():
        task = registry.get(name)
        assert (task.num_channels, task.num_classes, task.imaging) == (channels, classes, imaging)
        assert task.url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{name}.tar"
        assert task.md5 is not None and len(task.md5) == 32
        assert task.tensor_image_size == ("4D" if channels > 1 else "3D")
        assert (task.num_training, task.num_test) == COUNTS[name]  # what fetch compares a download against


def test_catalog_matches_the_shared_dataset_json(shared_task: Path) -> None:
    import json

    meta = json.loads((shared_task / "dataset.json").read_text())
    task = get_task("Task04_Hippocampus")
    assert {int(k): v for k, v in meta["labels"].items()} == task.labels
    assert list(meta["modality"].values()) == task.modalities


def test_user_task_is_found_and_wins(home: Path) -> None:
    write_task_file(home, "Task99_Lab")
    assert get_task("Task99_Lab").source_file.startswith(str(home))
    write_task_file(home, "Task04_Hippocampus", nsd_tolerance_mm=3.0)
    assert get_task("Task04_Hippocampus").nsd_tolerance_mm == 3.0


def test_bad_task_files(home: Path) -> None:
    write_task_file(home, "Task98_Bad", colour="blue")
    with pytest.raises(UsageError, match="unknown keys colour"):
        task_registry()
    (home / "tasks" / "Task98_Bad.yaml").write_bytes(b"\xff\xfename: x\n")
    with pytest.raises(UsageError, match=r"Task98_Bad.yaml: not UTF-8 text \(invalid start byte at byte 0\)"):
        task_registry()
    # A key given twice: YAML kept the last one, silently (`imaging: MRI` then `CT` changed normalisation)
    write_task_file(home, "Task98_Bad")
    path = home / "tasks" / "Task98_Bad.yaml"
    assert "imaging:" in path.read_text()
    path.write_text(path.read_text() + "imaging: CT\n")
    lines = len(path.read_text().splitlines())
    with pytest.raises(UsageError, match=rf"Task98_Bad.yaml: not valid YAML \(line {lines}, column 1: "
                                         r"key 'imaging' given twice\)$"):
        task_registry()


def test_unknown_task_did_you_mean(home: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'Task04_Hippocampus'"):
        get_task("Task04_Hipocampus")


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_task_name_that_is_no_plain_folder_name_is_refused(home: Path, name: str) -> None:
    """A task file `...yaml` named '..' was registered: fetch, the cache and sweep put the task's folders
    one level above DATA_DIR and RESULTS."""
    write_task_file(home, name)
    with pytest.raises(UsageError, match=rf"{name}.yaml: 'name' must be a folder name that starts with a "
                                         "letter or digit"):
        task_registry()
