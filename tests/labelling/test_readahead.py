"""Reading ahead of the model: order, the pixel budget, shape batches."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from workers.labelling.readahead import PixelBudget, ShapeBatcher, read_ahead


def test_read_ahead_keeps_order_and_bounds_the_queue():
    from concurrent.futures import ThreadPoolExecutor

    started = []

    def work(i, x):
        assert i == x
        started.append(x)
        return x * x

    with ThreadPoolExecutor(4) as pool:
        gen = read_ahead(pool, work, range(100), depth=3)
        assert next(gen) == 0
        assert len(started) <= 4  # 3 submitted ahead, plus the one replacing the first
        assert list(gen) == [x * x for x in range(1, 100)]


def test_shape_batcher_batches_equal_shapes_and_bounds_waiting():
    b = ShapeBatcher(batch_size=2, max_waiting=3)
    assert b.add("a1", (10, 10, 3)) == []
    assert b.add("b1", (20, 10, 3)) == []
    assert b.add("a2", (10, 10, 3)) == [["a1", "a2"]]  # full
    assert b.add("c1", (30, 10, 3)) == []
    assert b.add("d1", (40, 10, 3)) == []
    assert b.add("e1", (50, 10, 3)) == [["b1"]]  # 4 waiting > 3: the largest (first) group goes
    assert sorted(b.flush()) == [["c1"], ["d1"], ["e1"]]
    assert b.flush() == []


def _run(budget: PixelBudget, sizes: list[int], delays: dict[int, float], hold_s: float = 0.01) -> list[int]:
    """read_ahead over items that reserve `sizes[i]` pixels; the consumer releases each after hold_s."""

    def load(i: int, size: int):
        time.sleep(delays.get(i, 0.0))
        hold = budget.hold(i)
        hold.take(size)
        return i, hold

    seen = []
    with ThreadPoolExecutor(4) as pool:
        for i, hold in read_ahead(pool, load, sizes, depth=4, on_wait=budget.head):
            seen.append(i)
            time.sleep(hold_s)
            hold.release()
    return seen


def test_the_budget_bounds_pixels_in_flight():
    budget = PixelBudget(100)
    sizes = [30, 60, 10, 40, 90, 20, 50, 70, 30, 10] * 3
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_run(budget, sizes, {})))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "read-ahead deadlocked"
    assert result == [list(range(len(sizes)))]
    assert budget.used == 0 and budget.peak <= 100 + max(sizes)


def test_an_image_larger_than_the_budget_still_decodes():
    budget = PixelBudget(50)
    assert _run(budget, [10, 500, 10], {}) == [0, 1, 2]
    assert 500 <= budget.peak <= 50 + 500  # over the budget by at most that image


def test_the_head_of_the_line_never_waits_for_later_items():
    """Later items fill the budget before the head reserves: the head goes over it rather than deadlock."""
    budget = PixelBudget(100)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_run(budget, [80, 50, 50], {0: 0.3})))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "read-ahead deadlocked"
    assert result == [[0, 1, 2]] and budget.peak == 180


def test_a_consumer_that_stops_does_not_leave_readers_waiting():
    budget = PixelBudget(100)

    def consume() -> None:
        with ThreadPoolExecutor(4) as pool:
            try:
                for _ in read_ahead(pool, lambda i, size: _taken(budget, i, size), [90] * 8, 4, budget.head):
                    raise MemoryError("the model ran out of memory")  # holding item 0's pixels
            except MemoryError:
                pass
            finally:
                budget.close()

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "readers waiting for pixels kept the pool from shutting down"


def _taken(budget: PixelBudget, i: int, size: int):
    hold = budget.hold(i)
    hold.take(size)
    return hold
