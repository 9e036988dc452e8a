from pipeline.report import render_table

METRICS = {
    "coop_ship": {"base": 80.0, "new": 70.0, "hm": 74.67, "base_std": 1.0, "new_std": 2.0, "hm_std": 0.5},
    "zeroshot": {
        "base": 60.0,
        "new": 65.5,
        "hm": 62.63,
        "base_std": 0.0,
        "new_std": 0.0,
        "hm_std": 0.0,
        "joint_base": 50.0,
        "joint_new": 40.0,
        "joint_hm": 44.44,
    },
}


def test_table_rows_follow_paper_order_and_values():
    table = render_table(METRICS, {"generator": {"synthetic_zeroshot_acc": 91.25}}, n_seeds=3)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1] == "| Zero-shot CLIP | 60.00 ± 0.00 | 65.50 ± 0.00 | 62.63 ± 0.00 |"
    assert rows[2] == "| CoOp + SHIP | 80.00 ± 1.00 | 70.00 ± 2.00 | 74.67 ± 0.50 |"
    assert "mean ± std over 3 seeds" in table
    assert "| Zero-shot CLIP | 50.00 | 40.00 | 44.44 |" in table
    assert "| CoOp + SHIP | – | – | – |" in table
    assert "| generator.synthetic_zeroshot_acc | 91.25 |" in table
    assert "| Tip-Adapter-F + SHIP | 83.80 | 76.42 | 79.94 |" in table  # paper reference block
