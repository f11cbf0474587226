;; many_imports.wat — test fixture for import validation: an echo agent
;; that imports all four host functions (caxton.log, caxton.now_ms,
;; caxton.send, caxton.message_info) without calling them. It must deploy.
(module
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (import "caxton" "now_ms" (func $now_ms (result i64)))
  (import "caxton" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the one page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
