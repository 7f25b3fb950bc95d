import torch

from ptq161.eval.concentration import salient_share, save_salient_maps, top_channels, top_entries_mask


def test_top_masks_pick_exactly_the_largest():
    w = torch.arange(100.0).reshape(10, 10) - 49.5  # |w| largest: index 0 and index 99 (49.5 each)
    m = top_entries_mask(w, 0.02)
    assert m.sum() == 2 and m.flatten()[0] and m.flatten()[99]
    assert top_channels(torch.tensor([0.1, 5.0, 3.0, 0.2, 4.0]), 0.4).tolist() == [False, True, False, False, True]


def test_salient_share_known_answers():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 100, generator=g) * 0.01
    stat = torch.rand(100, generator=g)
    chans = top_channels(stat, 0.2)
    w[:, chans] *= 100  # every large weight sits in a salient channel
    assert salient_share(w, stat) == 1.0
    w2 = torch.randn(64, 100, generator=g) * 0.01
    w2[:, ~chans] *= 100  # every large weight outside the salient channels
    assert salient_share(w2, stat) == 0.0
    # no structure: about the channel share (0.2) on a large random matrix
    w3 = torch.randn(512, 1000, generator=g)
    s3 = torch.rand(1000, generator=g)
    assert abs(salient_share(w3, s3) - 0.2) < 0.03


def test_maps_are_written(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=g)
    path = tmp_path / "maps.png"
    save_salient_maps({"layer": (w, w * 2)}, {"layer": torch.rand(48, generator=g)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
