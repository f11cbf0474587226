;; reverse.wat — benchmark agent (ABI version 1): replies with its content
;; reversed, byte by byte: the same work as the Extism plugin in
;; ../shared/peers/extism_reverse.wat, so bench_callpath.py compares the two
;; hosts' per-call cost on the same job.
;;
;; Memory: the input goes at 1024 (caxton_alloc hands out the same buffer
;; every message: the host copies the previous reply out before it calls
;; caxton_alloc again), the reply right after it.
(module
  (memory (export "memory") 1)

  ;; caxton_alloc(len) -> ptr: room for the input and its reversed copy,
  ;; growing memory if needed; 0 when it cannot.
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (local $end i64) (local $have i64)
    (local.set $end (i64.add (i64.const 1024) (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 1))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                                                   (i64.const 0xFFFF))
                                                          (i64.const 16))))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 1024))

  ;; caxton_handle(ptr, len) -> (reply_ptr << 32) | reply_len
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32) (local $i i32)
    (local.set $out (i32.add (local.get $ptr) (local.get $len)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (i32.store8 (i32.add (local.get $out) (local.get $i))
        (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len))
                              (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.extend_i32_u (local.get $len)))))
