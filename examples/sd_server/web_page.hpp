#pragma once
/// \file sd_server/web_page.hpp
/// The page carousel-sd-server serves at `GET /`: a prompt form, a live progress bar per request in flight
/// (Server-Sent Events from `GET /v1/images/generations/{id}/events`), the images as they finish. No build step.

namespace carousel::examples::sd_server {

/// The HTML of `GET /` (self-contained: inline CSS and JavaScript, no external resources).
inline constexpr const char* web_page = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>carousel · Stable Diffusion server</title>
<style>
  :root { --bg:#0f1117; --panel:#181b24; --line:#2a2f3d; --text:#e6e8ee; --dim:#9aa3b5; --accent:#7c9cff; --ok:#4cc38a; --bad:#ff6b6b; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; align-items:baseline; gap:16px; padding:18px 28px; border-bottom:1px solid var(--line); }
  header h1 { margin:0; font-size:20px; letter-spacing:.3px; }
  header .meta { color:var(--dim); font-size:13px; flex:1; }
  header a { color:var(--accent); text-decoration:none; font-size:13px; }
  main { display:grid; grid-template-columns: 340px 1fr; gap:24px; padding:24px 28px; }
  form, .queue { background:var(--panel); border:1px solid var(--line); border-radius:12px; padding:18px; }
  label { display:block; font-size:12px; color:var(--dim); margin:10px 0 4px; text-transform:uppercase; letter-spacing:.6px; }
  input, textarea, select { width:100%; padding:8px 10px; border-radius:8px; border:1px solid var(--line); background:#10131b; color:var(--text); font:inherit; }
  textarea { resize:vertical; min-height:64px; }
  .row { display:grid; grid-template-columns: 1fr 1fr; gap:10px; }
  button { margin-top:16px; width:100%; padding:10px; border:0; border-radius:8px; background:var(--accent); color:#0b0d12; font-weight:600; font-size:15px; cursor:pointer; }
  button:hover { filter:brightness(1.1); }
  .queue h2 { margin:0 0 12px; font-size:15px; color:var(--dim); font-weight:500; }
  #jobs { display:grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap:14px; }
  .job { border:1px solid var(--line); border-radius:10px; padding:12px; background:#131620; }
  .job .prompt { font-size:13px; margin-bottom:8px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
  .job .status { font-size:12px; color:var(--dim); margin-top:6px; }
  .bar { height:8px; border-radius:4px; background:#232838; overflow:hidden; }
  .bar > div { height:100%; width:0; background:linear-gradient(90deg, var(--accent), #a98bff); transition: width .15s ease; }
  .job.done .bar > div { background:var(--ok); }
  .job.failed .bar > div { background:var(--bad); width:100% !important; }
  .job.failed .status { color:var(--bad); }
  .images { display:grid; grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)); gap:8px; margin-top:10px; }
  .images img { width:100%; aspect-ratio:1; object-fit:contain; image-rendering:pixelated; border-radius:6px; background:#000; }
  .empty { color:var(--dim); font-size:14px; }
</style>
</head>
<body>
<header>
  <h1>carousel</h1>
  <span class="meta" id="meta">loading…</span>
  <a href="/metrics">metrics</a>
  <a href="/health">health</a>
</header>
<main>
  <form id="form">
    <label for="prompt">Prompt</label>
    <textarea id="prompt" required>a red circle on a blue background</textarea>
    <label for="negative">Negative prompt</label>
    <input id="negative" value="">
    <div class="row">
      <div><label for="steps">Steps</label><input id="steps" type="number" min="1" max="1000" value="20"></div>
      <div><label for="guidance">Guidance</label><input id="guidance" type="number" min="0" max="100" step="0.5" value="7.5"></div>
    </div>
    <div class="row">
      <div><label for="seed">Seed (empty = random)</label><input id="seed" type="number" min="0"></div>
      <div><label for="size">Size</label><input id="size" value="512x512"></div>
    </div>
    <div class="row">
      <div><label for="n">Images</label><input id="n" type="number" min="1" max="8" value="1"></div>
      <div><label for="sampler">Sampler</label><select id="sampler"><option>ddim</option><option>ddpm</option><option>euler</option><option>dpm++2m</option></select></div>
    </div>
    <button type="submit" id="generate">Generate</button>
  </form>
  <section class="queue">
    <h2>Requests</h2>
    <div id="jobs"><div class="empty" id="empty">Nothing yet: submit a prompt. Every request gets a live progress bar; several run in one batch.</div></div>
  </section>
</main>
<script>
const $ = (id) => document.getElementById(id);
fetch('/health').then(r => r.json()).then(h => {
  $('meta').textContent = `${h.model.split('/').pop()} · ${h.device} · ${h.admission} batching · max batch ${h.max_batch_size} · v${h.version}`;
  $('size').value = h.default_size;
  $('steps').value = h.default_steps;
  $('guidance').value = h.default_guidance;
}).catch(() => { $('meta').textContent = 'server unreachable'; });

function card(prompt) {
  const el = document.createElement('div');
  el.className = 'job';
  el.innerHTML = '<div class="prompt"></div><div class="bar"><div></div></div><div class="status">submitting…</div><div class="images"></div>';
  el.querySelector('.prompt').textContent = prompt;
  el.querySelector('.prompt').title = prompt;
  $('empty')?.remove();
  $('jobs').prepend(el);
  return el;
}

function fail(el, message) {
  el.classList.add('failed');
  el.querySelector('.status').textContent = message;
}

$('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = {
    prompt: $('prompt').value, negative_prompt: $('negative').value, size: $('size').value,
    steps: Number($('steps').value), guidance_scale: Number($('guidance').value), n: Number($('n').value),
    sampler: $('sampler').value, async: true,
  };
  if ($('seed').value !== '') body.seed = Number($('seed').value);
  const el = card(body.prompt);
  let res, json;
  try {
    res = await fetch('/v1/images/generations', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    json = await res.json();
  } catch (e) { return fail(el, 'request failed: ' + e); }
  if (res.status !== 202) return fail(el, `${res.status}: ${json.error ? json.error.message : 'error'}`);
  el.id = json.id;
  const steps = [], totals = [];
  const source = new EventSource(json.events_url);
  source.addEventListener('queued', (e) => {
    const d = JSON.parse(e.data);
    d.total.forEach((t, i) => { steps[i] = 0; totals[i] = t; });
    el.querySelector('.status').textContent = `${d.id} · queued · seed ${d.seeds[0]}`;
  });
  source.addEventListener('progress', (e) => {
    const d = JSON.parse(e.data);
    steps[d.index] = d.step; totals[d.index] = d.total;
    const done = steps.reduce((a, b) => a + b, 0), total = totals.reduce((a, b) => a + b, 0);
    el.querySelector('.bar > div').style.width = (100 * done / total).toFixed(1) + '%';
    const eta = d.eta_ms > 0 || d.step === d.total ? `${(d.eta_ms / 1000).toFixed(1)} s` : '…';
    el.querySelector('.status').textContent = `${d.id} · step ${d.step}/${d.total} · ETA ${eta}`;
  });
  source.addEventListener('done', (e) => {
    source.close();
    const d = JSON.parse(e.data);
    el.classList.add('done');
    el.querySelector('.bar > div').style.width = '100%';
    el.querySelector('.status').textContent = `${d.id} · done in ${(d.timings.total_ms / 1000).toFixed(2)} s`;
    for (const img of d.data) {
      const im = document.createElement('img');
      im.src = 'data:image/png;base64,' + img.b64_json;
      im.title = 'seed ' + img.seed;
      im.className = 'result';
      el.querySelector('.images').appendChild(im);
    }
  });
  source.addEventListener('error', (e) => {
    source.close();
    if (e.data) { const d = JSON.parse(e.data); fail(el, d.error.message); }
    else if (!el.classList.contains('done')) fail(el, 'event stream lost');
  });
});
</script>
</body>
</html>
)HTML";

}  // namespace carousel::examples::sd_server
