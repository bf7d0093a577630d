"""python-etcd against a kardia member: set, get, CAS, in-order keys,
listing, watch, machines, leader, delete. Prints OK on success; any failed
expectation raises. Usage: python3 python_etcd_smoke.py PORT"""
import sys
import threading

import etcd

port = int(sys.argv[1])
c = etcd.Client(host="127.0.0.1", port=port)

assert c.write("/py/k", "v1", ttl=30).value == "v1"
r = c.read("/py/k")
assert r.value == "v1" and 0 < r.ttl <= 30, (r.value, r.ttl)
r = c.write("/py/k", "v2", prevValue="v1")
assert (r.value, r.action) == ("v2", "compareAndSwap"), r
try:
    c.write("/py/k", "v3", prevValue="nope")
    raise AssertionError("CAS should have failed")
except etcd.EtcdCompareFailed as e:
    assert "[nope != v2]" in str(e), e
try:
    c.write("/py/k", "v4", prevExist=False)
    raise AssertionError("create should have failed")
except etcd.EtcdAlreadyExist:
    pass
q1 = c.write("/py/queue", "a", append=True)
q2 = c.write("/py/queue", "b", append=True)
assert q1.key < q2.key and q2.key.startswith("/py/queue/000"), (q1.key, q2.key)
keys = sorted(x.key for x in c.read("/py", recursive=True, sorted=True).leaves)
assert keys == ["/py/k", q1.key, q2.key], keys

seen = []
def watcher():
    seen.append(c.watch("/py/w", timeout=10))
t = threading.Thread(target=watcher)
t.start()
import time
time.sleep(0.3)
c.write("/py/w", "hello")
t.join()
assert seen and seen[0].value == "hello" and seen[0].action == "set", seen

assert c.machines == ["http://127.0.0.1:%d" % port], c.machines
assert c.leader["clientURLs"] == ["http://127.0.0.1:%d" % port], c.leader
c.delete("/py", recursive=True)
try:
    c.read("/py")
    raise AssertionError("/py should be gone")
except etcd.EtcdKeyNotFound:
    pass
print("OK")
