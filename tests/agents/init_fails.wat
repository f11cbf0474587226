;; init_fails.wat — test fixture: caxton_init returns 7 (non-zero), so the
;; agent fails to start and the deploy must report exit code 7. It would
;; otherwise be a working echo agent.
(module
  (memory (export "memory") 1)
  (func (export "caxton_init") (result i32)
    (i32.const 7))
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
