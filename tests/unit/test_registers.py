import pytest

from controller.spaces import registers
from controller.spaces.registers import Slot


def test_the_map_has_no_overlap():
    registers._check_overlaps(registers.SLOTS)  # what import does; the map is valid
    used = {}
    for s in registers.SLOTS:
        for bit in range(s.lo, s.lo + s.bits):
            assert (s.field, bit) not in used, f"{s.name} overlaps {used[(s.field, bit)]}"
            used[(s.field, bit)] = s.name


def test_overlap_is_refused():
    with pytest.raises(ValueError, match="overlaps"):
        registers._check_overlaps([Slot("a", "reg1", 0, 8, ""), Slot("b", "reg1", 4, 8, "")])
    registers._check_overlaps([Slot("a", "reg1", 0, 8, ""), Slot("b", "reg1", 8, 8, "")])


def test_slot_values_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        registers.FROM_TUNNEL.m(2)
    assert registers.FROM_TUNNEL.m(1) == {"reg10": (1, 1)}
    assert registers.OUTPORT.m(7) == {"reg15": 7}
