"use strict";
// What the dashboard (index.html) and a miner's page (miner.html) share. Every value from the API goes into the
// page as text, never as HTML: worker names and addresses are client input.

const $ = (id) => document.getElementById(id);

function hashrate(h) {
  const units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
  let i = 0;
  while (h >= 1000 && i < units.length - 1) { h /= 1000; i++; }
  return h.toFixed(2) + " " + units[i];
}

const when = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "-";           // epoch seconds
const whenIso = (text) => text ? new Date(text).toLocaleString() : "-";         // ISO 8601 from the API

// Satoshis (an integer) as BTC with 8 decimals, by integer arithmetic: exact for any amount of bitcoin.
function btc(sats) {
  const n = Number(sats || 0), sign = n < 0 ? "-" : "", abs = Math.abs(n);
  return sign + Math.floor(abs / 1e8) + "." + String(abs % 1e8).padStart(8, "0") + " BTC";
}

const percent = (share) => (100 * Number(share || 0)).toFixed(2) + " %";

// A link to the miner's page; the address is text and a URL parameter, never markup.
function addressLink(address) {
  const a = document.createElement("a");
  a.href = "/miner.html?" + new URLSearchParams({address: address}).toString();
  a.className = "address";
  a.textContent = address;
  return a;
}

// A table row. A cell is a value (shown as text), a DOM node, or {text | node, cls, value, sats}.
function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else if (typeof cell === "object" && cell !== null) {
      if (cell.node) td.appendChild(cell.node); else td.textContent = cell.text;
      if (cell.cls) td.className = cell.cls;
      if (cell.value !== undefined) td.dataset.value = cell.value;
      if (cell.sats !== undefined) td.dataset.sats = cell.sats;
    } else td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

const amount = (sats) => ({text: btc(sats), cls: "amount", sats: sats});

function fill(tableId, rows) {
  $(tableId).querySelector("tbody").replaceChildren(...rows);
}

// GET a JSON endpoint; an HTTP error becomes an Error with its status.
async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) {
    const err = new Error(r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return r.json();
}

function showError(text) {
  $("error").textContent = text;
  $("error").style.display = text ? "block" : "none";
}
