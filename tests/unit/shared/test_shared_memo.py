"""IdentityMemo: a value is found only with the very object it was kept for, and the memo stays bounded."""

from marginflow.shared.memo import IdentityMemo


class Answer:
    def __init__(self, n):
        self.n = n

    def __eq__(self, other):          # equal-looking objects must still not share an entry
        return isinstance(other, Answer) and other.n == self.n

    __hash__ = object.__hash__


def test_found_only_with_the_same_object():
    memo = IdentityMemo(8)
    a, twin = Answer(1), Answer(1)
    memo.put(a, "a")
    assert memo.get(a) == "a" and memo.get(twin) is None


def test_bounded_oldest_forgotten_first():
    memo = IdentityMemo(3)
    keys = [Answer(i) for i in range(5)]
    for k in keys:
        memo.put(k, k.n)
    assert len(memo) == 3
    assert memo.get(keys[0]) is None and memo.get(keys[1]) is None
    assert [memo.get(k) for k in keys[2:]] == [2, 3, 4]
