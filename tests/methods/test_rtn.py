from ptq161.methods.rtn import RTN, RTNConfig


def test_bit_counts_match_hand_computed_values():
    m, n = 6, 256
    assert RTN(RTNConfig(bits=2)).bits(m, n, {}) == (2.0, 6 * 256 * 2 + 6 * (16 + 2))
    assert RTN(RTNConfig(bits=3, group_size=128)).bits(m, n, {}) == (3.0, 6 * 256 * 3 + 6 * 2 * (16 + 3))
    assert RTN(RTNConfig(bits=1)).bits(m, n, {}) == (1.0, 6 * 256 + 6 * 32)
