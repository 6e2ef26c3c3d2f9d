// The request form's script, served as static/parameter-form.js (requests.py FormScript): the pages'
// CSP runs no inline script. Without it the form still works: a dependent list shows its choices for
// every parent value, grouped by that value, and the service checks what is sent.
// opshub request form: lists whose choices follow another parameter (data-follows="stack") show the
// choices of the parent's value, without a reload; what stays picked is kept.
(function () {
  'use strict';
  function follow(child) {
    var parent = document.getElementById('p-' + child.dataset.follows);
    if (!parent) { return; }
    var groups = {};
    Array.prototype.forEach.call(child.querySelectorAll('optgroup'), function (group) {
      groups[group.label] = Array.prototype.map.call(group.querySelectorAll('option'), function (option) {
        return { value: option.value, text: option.textContent, selected: option.selected };
      });
    });
    var note = document.getElementById('follows-' + child.name.slice(2));
    function show() {
      var picked = {};
      Array.prototype.forEach.call(child.options, function (option) {
        if (option.selected) { picked[option.value] = true; }
      });
      var choices = groups[parent.value] || [];
      child.innerHTML = '';
      if (!child.multiple) {
        child.append(new Option('', ''));
      }
      choices.forEach(function (choice) {
        var option = new Option(choice.text, choice.value);
        option.selected = Boolean(picked[choice.value]);
        child.append(option);
      });
      child.size = child.multiple ? Math.max(2, Math.min(choices.length, 8)) : 0;
      if (note) {
        note.textContent = choices.length
          ? 'The choices of ' + child.dataset.follows + ' ' + parent.value + '.'
          : 'No choices for ' + child.dataset.follows + ' ' + (parent.value || '(none picked)') + '.';
      }
    }
    parent.addEventListener('change', show);
    show();
  }
  function liveButton(form) {
    var box = form.querySelector('input[type=checkbox][data-dry-run]');
    var button = form.querySelector('#request-run');
    if (!box || !button) { return; }
    var label = button.textContent;
    function update() {
      button.textContent = box.checked ? label : button.dataset.liveLabel;
      button.classList.toggle('btn-warning', !box.checked);
      button.classList.toggle('btn-primary', box.checked);
    }
    box.addEventListener('change', update);
    update();
  }
  document.addEventListener('DOMContentLoaded', function () {
    Array.prototype.forEach.call(document.querySelectorAll('select[data-follows]'), follow);
    var form = document.getElementById('request-form');
    if (form) { liveButton(form); }
  });
})();
