"""The README tells a user what each shipped alert means, and its links lead somewhere."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_explains_every_shipped_alert():
    rules = yaml.safe_load((ROOT / "charts/adamw-operator/files/alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts, "no alerts found in the chart"
    rows = set(re.findall(r"^\| (AdamW\w+) \|", README, flags=re.M))
    assert rows == alerts, f"README alert table differs from the chart: {rows ^ alerts}"


def test_readme_local_links_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith("http")]
    assert local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
