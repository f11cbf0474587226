;; log_flood.wat — test fixture: a log flood. Every message makes 100000
;; calls to caxton.log (level 1, "flood line"), then the agent replies
;; "flooded". The host keeps a bounded number of records per message.
(module
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "flood line")  ;; 10 bytes
  (data (i32.const 32) "flooded")     ;; 7 bytes

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the first page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (i32.const 100000)))
        (call $log (i32.const 1) (i32.const 16) (i32.const 10))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 7)))
)
