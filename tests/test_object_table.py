"""The object table (medpipe.data.objects) against hand-counted label maps and objects_of."""

import numpy as np
import pytest

from medpipe.data.objects import ObjectTable, concat, objects_in


def test_semantic_components_per_class_with_areas_and_boxes():
    label = np.zeros((6, 8), dtype=np.uint8)
    label[0:2, 0:3] = 1  # class 1, 6 px
    label[4:6, 6:8] = 1  # class 1, second component, 4 px
    label[2:5, 2:3] = 2  # class 2, 3 px, touches class 1 diagonally only
    ids, areas, bbox = objects_in(label, instances=False)
    assert ids.tolist() == [1, 1, 2]
    assert areas.tolist() == [6, 4, 3]
    assert bbox.tolist() == [[0, 0, 2, 3], [4, 6, 6, 8], [2, 2, 5, 3]]


def test_instances_use_stored_ids():
    label = np.zeros((4, 4), dtype=np.uint16)
    label[0, 0:2] = 3
    label[3, 3] = 1
    ids, areas, bbox = objects_in(label, instances=True)
    assert ids.tolist() == [1, 3]
    assert areas.tolist() == [1, 2]
    assert bbox.tolist() == [[3, 3, 4, 4], [0, 0, 1, 2]]


def test_table_rows_offsets_and_min_px_filter():
    empty = np.zeros((3, 3), np.uint8)
    small = empty.copy()
    small[1, 1] = 1
    big = np.zeros((5, 4), np.uint8)
    big[0:3, 0:3] = 2
    big[4, 3] = 1
    table = ObjectTable.build([(0, -1, empty), (1, -1, small), (2, 4, big)], instances=False)
    assert table.case.tolist() == [1, 2] and table.z.tolist() == [-1, 4]
    assert table.count.tolist() == [1, 2] and table.first.tolist() == [0, 1]
    assert (table.height.tolist(), table.width.tolist()) == ([3, 5], [3, 4])
    assert table.area[table.objects_of_image(1)].tolist() == [1, 9]
    assert table.images_with_objects(2).tolist() == [False, True]
    assert table.images_with_objects(10).tolist() == [False, False]


def test_concat_rebases_offsets_and_round_trips():
    a = ObjectTable.build([(0, -1, np.eye(3, dtype=np.uint8))], instances=False)
    b = ObjectTable.build([(5, -1, np.ones((2, 2), np.uint8))], instances=False)
    both = concat([a, b])
    assert both.first.tolist() == [0, 3] and both.count.tolist() == [3, 1]
    again = ObjectTable.from_arrays(both.to_arrays())
    assert all(np.array_equal(x, y) for x, y in zip(again.to_arrays().values(), both.to_arrays().values()))


def test_inconsistent_arrays_are_refused():
    arrays = ObjectTable.build([(0, -1, np.ones((2, 2), np.uint8))], instances=False).to_arrays()
    arrays["count"] = np.array([2], np.int32)
    with pytest.raises(ValueError, match="counts add up"):
        ObjectTable.from_arrays(arrays)


@pytest.mark.parametrize("instances", [False, True])
def test_counts_and_areas_agree_with_objects_of(instances):
    from medpipe.finetune.data import objects_of

    rng = np.random.default_rng(0)
    label = (rng.random((40, 40)) < 0.3) * rng.integers(1, 4, (40, 40))
    _, areas, _ = objects_in(label, instances)
    object_map, count = objects_of(label, 1, instances)
    assert count == len(areas)
    assert np.bincount(object_map.ravel())[1:].tolist() == areas.tolist()
