"""Inline CSS and JavaScript of the report page (kept in Python so they ship with the package).

The script adds a click-to-enlarge lightbox for ``img.zoom`` (click again: full size, Esc or a
click outside: close) and click-to-sort headers for ``table.sortable``. No external resource.
"""

CSS = """
:root{--ink:#1d2330;--muted:#6b7480;--line:#e3e6ea;--bg:#f6f7f5;--brand:#24453a;--accent:#2c5f8a;
--good:#1b7f5f;--bad:#c0392b;--danger:#a61b1b;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;
color:var(--ink);background:var(--bg)}
.wrap{max-width:1240px;margin:0 auto;padding:0 24px}
header{background:linear-gradient(135deg,#1d3a30,#2f5d4c);color:#fff;padding:28px 0 26px}
header .kicker{text-transform:uppercase;letter-spacing:.12em;font-size:11px;opacity:.75}
header h1{margin:4px 0 2px;font-size:30px;font-weight:650;letter-spacing:-.01em}
header .run{opacity:.85;font-size:13px;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-top:20px}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}}
.card{background:rgba(255,255,255,.97);color:var(--ink);border-radius:10px;padding:12px 14px;
box-shadow:0 2px 8px rgba(0,0,0,.18);border-top:4px solid var(--accent)}
.card.danger{border-top-color:var(--bad)}
.card .label{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.25}
.card .sub{font-size:12px;color:var(--muted)}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);
box-shadow:0 1px 4px rgba(0,0,0,.04)}
nav .wrap{display:flex;flex-wrap:wrap;gap:4px 18px;padding-top:9px;padding-bottom:9px}
nav a{color:var(--brand);text-decoration:none;font-weight:550;font-size:13px}
nav a:hover{text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:20px 24px;margin:22px 0;
scroll-margin-top:52px}
section.danger{border:2px solid var(--bad);box-shadow:0 0 0 4px rgba(192,57,43,.07)}
section.danger h2{color:var(--danger)}
h2{margin:0 0 6px;font-size:20px;font-weight:650}
h3{margin:18px 0 6px;font-size:16px}
h4{margin:10px 0 4px;font-size:13px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
p.lead{color:#3d4551;margin:0 0 14px;max-width:980px}
.muted{color:var(--muted)}
.note{color:var(--muted);font-style:italic}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f2f0;padding:1px 4px;
border-radius:4px}
pre{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f6f8f6;padding:12px;border-radius:8px;
overflow:auto;max-height:420px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600;
border-bottom:2px solid var(--line);background:#fafbfa;position:sticky;top:0}
table.ranks tbody th{font-weight:600}
table.compact td,table.compact th{padding:4px 9px}
table.scroll{display:block;max-height:520px;overflow:auto}
td.num{text-align:right;white-space:nowrap}
td.bar{background:linear-gradient(90deg,rgba(44,95,138,.16) var(--w),transparent var(--w))}
tr.leafrow{background:#f3f7fb}
tr.leafrow th::after{content:" ★";color:var(--accent)}
tr.poisonrow{background:#fdf1f0}
td.delta.up{color:var(--good);font-weight:600}
td.delta.down{color:var(--bad);font-weight:600}
td.delta.same{color:var(--muted)}
b.bad,td.bad{color:var(--bad);font-weight:600}
header .verdict{margin:16px 0 0;max-width:1020px;font-size:14.5px;line-height:1.6;opacity:.95}
header .verdict b{color:#fff}
.badge{display:inline-block;font-size:10.5px;font-style:normal;padding:0 6px;border-radius:8px;margin-left:6px;
vertical-align:1px}
.badge.poison{background:#fbe3e0;color:var(--danger);border:1px solid #f1b5ad}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 14px}
.stat{flex:1 1 170px;border:1px solid var(--line);border-radius:10px;padding:10px 14px;background:#fbfcfb}
.stat.danger{border-color:#f1b5ad;background:#fdf4f3}
.stat .value{font-size:22px;font-weight:650}
.stat .label{font-size:12.5px;font-weight:600}
.stat .sub{font-size:12px;color:var(--muted)}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px}
.three{display:grid;grid-template-columns:0.8fr 1.1fr 1.1fr;gap:20px}
@media (max-width:900px){.two,.three{grid-template-columns:1fr}}
.focus{border-top:1px solid var(--line);margin-top:8px;padding-top:4px}
.focus:first-child{border-top:0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:18px;margin-top:14px}
.gallery.wide,.focus .gallery{grid-template-columns:1fr}
.gallery.half{grid-template-columns:1.2fr 1fr}
@media (max-width:900px){.gallery.half{grid-template-columns:1fr}}
th.group{text-align:center;border-bottom:1px solid var(--line)}
table.narrow{width:auto;min-width:560px}
figure.fig{margin:0;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fff}
figure.fig img{width:100%;height:auto;display:block;cursor:zoom-in;border-radius:4px}
figure.fig figcaption{font-size:12.5px;color:#3d4551;margin-top:6px}
details{margin:8px 0;border:1px solid var(--line);border-radius:8px;padding:6px 12px;background:#fcfdfc}
details summary{cursor:pointer;font-weight:600;padding:4px 0}
footer{color:var(--muted);font-size:12px;padding:10px 24px 40px}
#lightbox{position:fixed;inset:0;background:rgba(15,20,18,.88);display:none;z-index:50;overflow:auto;cursor:zoom-out}
#lightbox.open{display:block}
#lightbox img{display:block;margin:3vh auto 0;max-width:96vw;max-height:88vh;background:#fff;cursor:zoom-in}
#lightbox img.full{max-width:none;max-height:none;cursor:zoom-out}
#lightbox .cap{color:#eee;text-align:center;padding:8px;font-size:13px}
th.sortable{cursor:pointer}
"""

JS = """
(function(){
  var box=document.createElement('div');box.id='lightbox';
  var cap=document.createElement('div');cap.className='cap';box.appendChild(cap);
  document.body.appendChild(box);
  function close(){box.classList.remove('open');var i=box.querySelector('img');if(i)box.removeChild(i);}
  document.querySelectorAll('img.zoom').forEach(function(img){
    img.addEventListener('click',function(){
      close();var big=document.createElement('img');big.src=img.src;big.alt=img.alt;
      big.addEventListener('click',function(ev){ev.stopPropagation();big.classList.toggle('full');});
      box.insertBefore(big,cap);cap.textContent=img.alt+' (click image for full size, Esc to close)';
      box.classList.add('open');});
  });
  box.addEventListener('click',close);
  document.addEventListener('keydown',function(ev){if(ev.key==='Escape')close();});
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('thead th').forEach(function(th,col){
      th.classList.add('sortable');th.title='Click to sort';
      th.addEventListener('click',function(){
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.asc!=='1';
        function key(r){var s=r.cells[col].textContent.replace(/[,%]/g,'');var v=parseFloat(s);return isNaN(v)?s:v;}
        rows.sort(function(a,b){var x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});th.dataset.asc=asc?'1':'0';});
    });
  });
})();
"""
