;; no_handle.wat — test fixture: NOT a valid agent.
;; Exports memory and caxton_alloc but no caxton_handle; deploying it must
;; be rejected by ABI validation (missing required export).
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
)
