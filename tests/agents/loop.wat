;; loop.wat — test fixture: caxton_handle never returns (infinite loop).
;; Used to check that the host's per-message time/fuel limit interrupts
;; the agent, fails only that message, and keeps the worker usable.
(module
  (memory (export "memory") 1)
  (global $spins (mut i64) (i64.const 0))
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (loop $forever
      ;; do some visible work so the loop cannot be considered empty
      (global.set $spins (i64.add (global.get $spins) (i64.const 1)))
      (br $forever))
    (i64.const 0))
)
