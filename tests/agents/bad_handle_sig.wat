;; bad_handle_sig.wat — test fixture: NOT a valid agent.
;; Exports caxton_handle with the wrong signature, (i32) -> i32 instead of
;; (i32, i32) -> i64; deploying it must be rejected by ABI validation.
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (result i32)
    (i32.const 0))
)
