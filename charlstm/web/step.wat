;; The matrix product of the exported page's step (charlstm/web/local.js), in WebAssembly text.
;; scripts/build_wasm.py assembles it into step.wasm, which the page embeds; a test checks that the
;; shipped step.wasm is exactly what this source assembles to.
;;
;; out[r] = sum over c of w[r * cols + c] * x[c], for a row-major float32 matrix w (rows x cols)
;; and a vector x; addresses are byte offsets into the page's memory. The export pads rows and
;; columns to multiples of 4 with zeros, so the loops need no remainder: four rows at a time share
;; each load of x, each row summing four columns at a time in the lanes of one f32x4 (128-bit SIMD),
;; and the four lanes are added at the end of the row. About 4 billion multiply-adds a second in
;; V8 on one core of the 2-core Xeon that measured it, against 0.8 billion for plain JavaScript
;; over Float32Arrays (docs/elsewhere.md).
(module
  (memory (export "memory") 1)
  (func $lanes (param $v v128) (result f32)
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))
  (func (export "matvec") (param $w i32) (param $x i32) (param $out i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $x_end i32) (local $out_end i32) (local $xp i32)
    (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $xv v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))  ;; bytes per row
    (local.set $x_end (i32.add (local.get $x) (local.get $stride)))
    (local.set $out_end (i32.add (local.get $out) (i32.shl (local.get $rows) (i32.const 2))))
    (local.set $w0 (local.get $w))
    (block $rows_done
      (loop $four_rows
        (br_if $rows_done (i32.ge_u (local.get $out) (local.get $out_end)))
        (local.set $w1 (i32.add (local.get $w0) (local.get $stride)))
        (local.set $w2 (i32.add (local.get $w1) (local.get $stride)))
        (local.set $w3 (i32.add (local.get $w2) (local.get $stride)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $xp (local.get $x))
        (block $cols_done
          (loop $four_cols
            (br_if $cols_done (i32.ge_u (local.get $xp) (local.get $x_end)))
            (local.set $xv (v128.load (local.get $xp)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load (local.get $w0)) (local.get $xv))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (v128.load (local.get $w1)) (local.get $xv))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (v128.load (local.get $w2)) (local.get $xv))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (v128.load (local.get $w3)) (local.get $xv))))
            (local.set $xp (i32.add (local.get $xp) (i32.const 16)))
            (local.set $w0 (i32.add (local.get $w0) (i32.const 16)))
            (local.set $w1 (i32.add (local.get $w1) (i32.const 16)))
            (local.set $w2 (i32.add (local.get $w2) (i32.const 16)))
            (local.set $w3 (i32.add (local.get $w3) (i32.const 16)))
            (br $four_cols)))
        (f32.store offset=0 (local.get $out) (call $lanes (local.get $a0)))
        (f32.store offset=4 (local.get $out) (call $lanes (local.get $a1)))
        (f32.store offset=8 (local.get $out) (call $lanes (local.get $a2)))
        (f32.store offset=12 (local.get $out) (call $lanes (local.get $a3)))
        (local.set $w0 (local.get $w3))  ;; w3 has walked to the end of its row: the next four rows start there
        (local.set $out (i32.add (local.get $out) (i32.const 16)))
        (br $four_rows)))))
