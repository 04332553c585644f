"""The one error type of the options layer, and the "did you mean" helper its messages use."""
import difflib


class OptionsError(ValueError):
    """An options file is invalid. The message names the key and how to fix it."""


def close_match(word: str, choices) -> str:
    choices = sorted(str(c) for c in choices)
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.5)
    if match:
        return f"Did you mean '{match[0]}'?"
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return f"Valid choices: {shown}."
