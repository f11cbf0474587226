;; noreply.wat — test fixture: caxton_handle always returns 0, i.e. the
;; agent handles every message but never replies.
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.const 0))
)
