;; escaper.wat — test fixture for the test-only escape probe
;; (worker/escape_probe.py). Each message's content is a probe command
;; ("tcp:PORT", "kill:PID", "unshare", ...); the agent hands it to
;; caxton_test.escape and replies with the i32 result, 4 bytes little-endian
;; (the errno the attempt got; 0 = it succeeded).
(module
  (import "caxton_test" "escape" (func $escape (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; One message at a time: its content always lands at 1024 (at most one
  ;; page minus that), the reply at 16.
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 60000))
      (then (return (i32.const 0))))
    (i32.const 1024))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i32.store (i32.const 16) (call $escape (local.get $ptr) (local.get $len)))
    ;; (16 << 32) | 4
    (i64.const 0x0000001000000004))
)
