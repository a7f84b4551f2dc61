"""The SCAN grammar (Lake & Baroni, 2018): an interpreter and a random command generator.

Used to check the task files (every line's actions must be the interpretation of its command) and
to make tiny SCAN-like data for tests without the real files (paper §2.3 uses the real files).

Grammar (C = command, S = repeated phrase, V = verb phrase, D = directed phrase, U = verb):

    C -> S | S and S | S after S
    S -> V | V twice | V thrice
    V -> D | U | D[1] opposite D[2] | D[1] around D[2]     (D[1] = verb, D[2] = direction)
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

Semantics: `x left` = I_TURN_LEFT then x; `x opposite left` = turn left twice, then x;
`x around left` = four times (turn left, x); `turn` performs no action of its own, so `turn left`
= I_TURN_LEFT, `turn opposite left` = 2 x I_TURN_LEFT, `turn around left` = 4 x I_TURN_LEFT.
`x twice`/`x thrice` repeat x; `x and y` = x then y; `x after y` = y then x. A bare `turn` is not
a command.
"""

from __future__ import annotations

import random

VERBS = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
REPEATS = {"twice": 2, "thrice": 3}
CONJUNCTIONS = ("and", "after")
ACTIONS = tuple(VERBS.values()) + tuple(TURNS.values())


def _verb_phrase(words: list[str], command: str) -> list[str]:
    """V -> actions."""
    verb = words[0] if words else ""
    if verb not in VERBS and verb != "turn":
        raise ValueError(f"not a SCAN command (unknown verb {verb!r}): {command!r}")
    act = [VERBS[verb]] if verb in VERBS else []  # `turn` only turns
    if len(words) == 1 and verb != "turn":
        return act
    if len(words) == 2 and words[1] in TURNS:
        return [TURNS[words[1]]] + act
    if len(words) == 3 and words[2] in TURNS and words[1] == "opposite":
        return [TURNS[words[2]]] * 2 + act
    if len(words) == 3 and words[2] in TURNS and words[1] == "around":
        return ([TURNS[words[2]]] + act) * 4
    raise ValueError(f"not a SCAN command (bad phrase {' '.join(words)!r}): {command!r}")


def _repeated_phrase(words: list[str], command: str) -> list[str]:
    """S -> actions."""
    if words and words[-1] in REPEATS:
        return _verb_phrase(words[:-1], command) * REPEATS[words[-1]]
    return _verb_phrase(words, command)


def interpret(command: str) -> list[str]:
    """The action sequence of a SCAN command, e.g. "turn left and look" -> [I_TURN_LEFT, I_LOOK].

    Raises ValueError for anything the grammar does not generate.
    """
    words = command.split()
    joins = [i for i, word in enumerate(words) if word in CONJUNCTIONS]
    if len(joins) > 1:
        raise ValueError(f"not a SCAN command (more than one conjunction): {command!r}")
    if not joins:
        return _repeated_phrase(words, command)
    i = joins[0]
    first, second = _repeated_phrase(words[:i], command), _repeated_phrase(words[i + 1:], command)
    return first + second if words[i] == "and" else second + first


def _random_verb_phrase(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return rng.choice(list(VERBS))
    verb, direction = rng.choice(list(VERBS) + ["turn"]), rng.choice(list(TURNS))
    return " ".join([verb] + [[], ["opposite"], ["around"]][form - 1] + [direction])


def _random_repeated_phrase(rng: random.Random) -> str:
    return " ".join([_random_verb_phrase(rng)] + rng.choice([[], ["twice"], ["thrice"]]))


def generate_commands(count: int, seed: int) -> list[str]:
    """`count` random SCAN commands (duplicates possible), the same for the same seed.

    Every grammar choice is uniform, so short and long commands, both conjunctions and every
    modifier occur even in a few dozen samples.
    """
    rng = random.Random(seed)
    commands = []
    for _ in range(count):
        form = rng.randrange(3)
        first = _random_repeated_phrase(rng)
        if form == 0:
            commands.append(first)
        else:
            commands.append(f"{first} {CONJUNCTIONS[form - 1]} {_random_repeated_phrase(rng)}")
    return commands
