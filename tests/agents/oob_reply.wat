;; oob_reply.wat — test fixture: caxton_handle returns a reply that lies
;; outside linear memory (ptr 0xFFFF0000, len 16; memory is one 64 KiB
;; page). The host must fail that message with a clear out-of-bounds
;; error instead of reading past the memory.
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    ;; (0xFFFF0000 << 32) | 16
    (i64.const 0xFFFF000000000010))
)
