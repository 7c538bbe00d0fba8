# Insert throughput of the SQLite tasks table with and without the change-log TEMP trigger
# (host/src/store/sqlite/changes.rs): WAL, synchronous=FULL, 64 inserts per transaction (as the
# group committer under load), 20,000 rows, three rounds. The cost of split-mode events on the
# submit path, in SQLite alone. Run from the repository root:
#   python3 tests/bench/sqlite_trigger_cost.py host/migrations/sqlite/000{1,2,5}_*.sql
# DIR: where the temporary databases go (default: the system temp folder).
import os, sqlite3, sys, tempfile, time, uuid
SCHEMA = open(sys.argv[1]).read() + open(sys.argv[2]).read() + open(sys.argv[3]).read()
TRIGGER = """CREATE TEMP TRIGGER t AFTER INSERT ON main.tasks BEGIN
 INSERT INTO task_changes (change_task, change_kind, change_origin) VALUES (new.id, 'created', 42); END;"""
def run(trigger, n=20000, batch=64):
    d = tempfile.mkdtemp(dir=os.environ.get("DIR"))
    c = sqlite3.connect(os.path.join(d, "t.db"), isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL")
    c.executescript(SCHEMA)
    if trigger: c.executescript(TRIGGER)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        c.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            c.execute("INSERT INTO tasks (id, task_type, status, input, priority, attempts, max_attempts, created_at, run_at, cancel_requested) VALUES (?, 'testkit.run', 'PENDING', '{\"mode\":\"noop\"}', 0, 0, 3, 1, 1, 0)", (str(uuid.uuid4()),))
        c.execute("COMMIT")
    return n / (time.perf_counter() - t0)
for rnd in range(3):
    print("round", rnd, "without trigger %.0f rows/s" % run(False), "with trigger %.0f rows/s" % run(True), flush=True)
