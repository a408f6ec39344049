from torchcache_c import demo


def test_demo_runs_and_reports_hit_rate_and_speed_up(capsys, tmp_path):
    demo.main(["--items", "64", "--epochs", "2", "--persistent-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "hit rate   0.0%" in out and "hit rate 100.0%" in out and "speed-up" in out
