"""Local lm-eval tasks: the item rules on constructed text, and the real builds from public data."""

import json

import pytest

from qsink.data.tasks import cloze_items, prepare_tasks, sentiment_items, task_items
from qsink.errors import QsinkError

FILLER = " ".join(f"word{i}" for i in range(48))


def test_cloze_rule_on_constructed_paragraphs():
    para = f"The garden was quiet and {FILLER} so she walked into the garden."
    short = "Too short to count, the garden and the garden."
    absent = f"The house was quiet and {FILLER} so she walked into the orchard."
    two_letters = f"We go to {FILLER} and so we go."
    items = cloze_items("\n\n".join([para, short, absent, two_letters]))
    assert items == [{"context": para.rsplit(" ", 1)[0], "target": "garden"}]


def test_cloze_passages_do_not_overlap():
    first = f"Anne was there and {FILLER} and it was Anne."
    second = f"Then Anne said {FILLER} so we saw Anne!"
    items = cloze_items(first + " " + second)  # one paragraph holding two passages
    assert [it["target"] for it in items] == ["Anne", "Anne"]
    assert items[1]["context"].startswith("Then Anne said")  # the second starts after the first target


def test_sentiment_labels_follow_the_rating_thresholds():
    lines = "1\t1.0\tgood\n2\t-1.0\tbad\n3\t0.99\tmeh\n4\t-0.5\tsoso\n5\t3.2\tgreat\r\n"
    items = sentiment_items(lines)
    assert [(it["text"], it["label"]) for it in items] == [("good", 1), ("bad", 0), ("great", 1)]
    with pytest.raises(QsinkError, match="line 2 is not"):
        sentiment_items("1\t1.0\tok\n2\tnot-a-number\tx\n")


def test_real_tasks_build_offline_from_public_data(qsink_home):
    root = prepare_tasks(log=lambda m: None)
    cloze = [json.loads(line) for line in (root / "qsink_cloze.test.jsonl").open()]
    assert len(cloze) == task_items("qsink_cloze")["test"] > 300
    for it in cloze:
        assert len(it["context"].split()) >= 50 and len(it["target"]) >= 3 and it["target"].isalpha()
    test = [json.loads(line) for line in (root / "qsink_sentiment.test.jsonl").open()]
    train = [json.loads(line) for line in (root / "qsink_sentiment.train.jsonl").open()]
    assert len(train) == 100
    everything = train + test
    pos = sum(it["label"] for it in everything)
    assert 4000 < pos < 5200 and 4000 < len(everything) - pos < 5200  # "about 4.6k of each"
    assert all((it["rating"] >= 1) == bool(it["label"]) and abs(it["rating"]) >= 1 for it in everything)
    assert not {it["id"] for it in train} & {it["id"] for it in test}
    # a second call rebuilds nothing and gives byte-identical files
    before = (root / "qsink_cloze.test.jsonl").read_bytes()
    prepare_tasks(["qsink_cloze"], log=lambda m: pytest.fail(f"rebuilt: {m}"))
    assert (root / "qsink_cloze.test.jsonl").read_bytes() == before
    assert "data_files" in (root / "qsink_cloze.yaml").read_text()
