"""Per-document functions for the WinoGrande task, with lm-eval's definitions (partial scoring:
the context is the sentence up to the blank with each option filled in, the target the rest)."""


def winogrande_doc_to_text(doc: dict) -> int:
    """Index of the correct option ("1" or "2" -> 0 or 1)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    """The sentence after the blank."""
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """The sentence up to the blank, completed with each option."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]
