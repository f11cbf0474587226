;; abi_sender.wat — test fixture for caxton.send and caxton.send_ex
;; (tests/test_agent_send_abi.py). The content is a script of records, run
;; in order; the reply is the i32 each call returned, 4 bytes little-endian
;; per call, in call order. All integers in the script are u32 little-endian.
;;
;;   's' LEN(to) to LEN(msg) msg         send(to, msg)
;;   'x' LEN(env) env LEN(msg) msg       send_ex(env, msg)
;;   'r' to_ptr to_len msg_ptr msg_len   send with raw pointers (absolute)
;;   'R' env_ptr env_len msg_ptr msg_len send_ex with raw pointers
;;   'i'                                 the code send returned in caxton_init
;;   't'                                 trap (unreachable)
;;   'l'                                 loop forever (until fuel or time runs out)
;;   'b'                                 reply with 2000 bytes instead of the codes
;;
;; Static data: "abi-peer" at offset 16 (8 bytes), for the raw records.
(module
  (import "caxton" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "send_ex" (func $send_ex (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "abi-peer")

  (global $heap (mut i32) (i32.const 1024))
  ;; What send returned in caxton_init, where no message is being handled.
  (global $init_code (mut i32) (i32.const 1))

  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                      (i64.const 0xFFFF))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  (func (export "caxton_init") (result i32)
    (global.set $init_code (call $send (i32.const 16) (i32.const 8) (i32.const 16) (i32.const 8)))
    (i32.const 0))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $out i32) (local $outp i32) (local $op i32)
    (local $a i32) (local $alen i32) (local $b i32) (local $blen i32) (local $big i32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    ;; Every record takes at least 1 byte and yields at most 4: room for 4 per byte.
    (local.set $out (call $bump (i32.add (i32.shl (local.get $len) (i32.const 2)) (i32.const 4))))
    (if (i32.eqz (local.get $out)) (then unreachable))
    (local.set $outp (local.get $out))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $op (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (if (i32.eq (local.get $op) (i32.const 0x74)) (then unreachable))       ;; 't'
        (if (i32.eq (local.get $op) (i32.const 0x6C))                           ;; 'l'
          (then (loop $forever (br $forever))))
        (if (i32.eq (local.get $op) (i32.const 0x62))                           ;; 'b'
          (then (local.set $big (i32.const 1)) (br $next)))
        (if (i32.eq (local.get $op) (i32.const 0x69))                           ;; 'i'
          (then
            (i32.store (local.get $outp) (global.get $init_code))
            (local.set $outp (i32.add (local.get $outp) (i32.const 4)))
            (br $next)))
        (if (i32.or (i32.eq (local.get $op) (i32.const 0x72))                   ;; 'r'
                    (i32.eq (local.get $op) (i32.const 0x52)))                  ;; 'R'
          (then
            (local.set $a (i32.load (local.get $p)))
            (local.set $alen (i32.load offset=4 (local.get $p)))
            (local.set $b (i32.load offset=8 (local.get $p)))
            (local.set $blen (i32.load offset=12 (local.get $p)))
            (local.set $p (i32.add (local.get $p) (i32.const 16))))
          (else
            ;; 's' / 'x': two length-prefixed spans inside the content
            (local.set $alen (i32.load (local.get $p)))
            (local.set $a (i32.add (local.get $p) (i32.const 4)))
            (local.set $p (i32.add (local.get $a) (local.get $alen)))
            (local.set $blen (i32.load (local.get $p)))
            (local.set $b (i32.add (local.get $p) (i32.const 4)))
            (local.set $p (i32.add (local.get $b) (local.get $blen)))))
        (i32.store (local.get $outp)
          (if (result i32) (i32.or (i32.eq (local.get $op) (i32.const 0x73))    ;; 's'
                                   (i32.eq (local.get $op) (i32.const 0x72)))   ;; 'r'
            (then (call $send (local.get $a) (local.get $alen) (local.get $b) (local.get $blen)))
            (else (call $send_ex (local.get $a) (local.get $alen) (local.get $b) (local.get $blen)))))
        (local.set $outp (i32.add (local.get $outp) (i32.const 4)))
        (br $next)))
    (if (local.get $big)
      (then (local.set $outp (i32.add (local.get $out) (i32.const 2000)))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (local.get $outp) (local.get $out)))))
)
