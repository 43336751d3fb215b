"""The handshake's decision (replication/log.py): where a replica's log meets the
master's, and whether it continues, cuts its tail, or needs a checkpoint."""

from strata.replication.log import Plan, common_lsn, plan, term_at


def test_term_at_reads_the_runs():
    terms = ((1, 5), (3, 10))
    assert [term_at(terms, x) for x in (1, 4, 5, 9, 10, 99)] == [0, 0, 1, 1, 3, 3]
    assert term_at((), 7) == 0


def test_identical_logs_meet_at_the_shorter_end():
    t = ((1, 1), (2, 50))
    assert common_lsn(t, 100, t, 70) == 70
    assert common_lsn(t, 30, t, 70) == 30


def test_logs_part_where_their_terms_first_differ():
    master = ((1, 1), (2, 41), (4, 60))
    # a former master of term 3 wrote 41..45 alone
    replica = ((1, 1), (3, 41))
    assert common_lsn(master, 100, replica, 45) == 40
    # the replica got term 2 up to 55, then wrote 56.. in term 3 alone
    replica = ((1, 1), (2, 41), (3, 56))
    assert common_lsn(master, 100, replica, 58) == 55
    # the master's term 4 started at 60, after the replica's end: no conflict
    assert common_lsn(master, 100, ((1, 1), (2, 41)), 59) == 59


def test_plan_continues_a_prefix():
    m = ((1, 1),)
    assert plan(m, 100, 1, m, 60, 10) == Plan(61)
    assert plan(m, 100, 1, m, 100, 10) == Plan(101)  # caught up: nothing to send yet
    assert plan(m, 100, 0, m, 100, 10) == Plan(101)  # nothing retained, nothing needed


def test_plan_cuts_a_tail_the_master_never_had():
    p = plan(((1, 1), (2, 41)), 100, 1, ((1, 1), (3, 41)), 45, 30)
    assert p.truncate_after == 40 and p.from_lsn == 41 and not p.resync


def test_plan_resyncs_when_the_tail_is_in_tables_or_the_log_is_gone():
    # divergence below the replica's flush point: its tables hold the tail
    p = plan(((1, 1), (2, 41)), 100, 1, ((1, 1), (3, 41)), 45, 43)
    assert p.resync and "flushed" in p.reason
    # the replica is behind what the master's log still holds
    p = plan(((1, 1),), 1000, 500, ((1, 1),), 300, 300)
    assert p.resync and p.from_lsn == 301
    # a new, empty replica of a master that purged its early log
    assert plan(((1, 1),), 1000, 500, (), 0, 0).resync
    # the parting point is before the master's retained log
    p = plan(((1, 1), (2, 41)), 1000, 600, ((1, 1), (3, 41)), 45, 30)
    assert p.resync
